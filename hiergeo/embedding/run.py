"""Embed the gazetteer's tree, measure the embedding and write it (what ``python -m
hiergeo.embedding`` does).

Writes to ``out``: ``metrics.json`` (see :mod:`hiergeo.embedding.quality`),
``points.safetensors`` and ``embedding.json`` (the points and how they were made), and
``disk.png``, a Poincaré-disk picture of countries and regions coloured by continent (from a
2-D construction when ``dim`` is not 2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(dim: int = 16, c: float = 1.0, method: str = "construct",
        out: Path | str = "results/embedding", seed: int = 0,
        gazetteer_path: Path | None = None, epochs: int | None = None,
        plot: bool = True) -> dict:
    import gazetteer

    from . import embed_tree, evaluate_embedding
    from .plot import plot_disk

    out = Path(out)
    gz = gazetteer.load(gazetteer_path)
    opts = {"epochs": epochs} if (method == "optimize" and epochs) else {}
    emb = embed_tree(gz, dim=dim, c=c, method=method, seed=seed, **opts)
    metrics = evaluate_embedding(emb, gz, seed=seed)
    emb.save(out)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(out / "metrics.json")
    if plot:
        disk = emb if dim == 2 else embed_tree(gz, dim=2, c=c, method="construct", seed=seed)
        title = None if dim == 2 else f"2-D construction, c={c:g}: countries and regions"
        plot_disk(disk, gz, out / "disk.png", title=title)
    log.info("wrote %s", out)
    return metrics
