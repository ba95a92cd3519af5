"""``python -m hiergeo.embedding``: embed the gazetteer's tree and measure the embedding.

Writes to ``--out``: ``metrics.json`` (see ``hiergeo.embedding.quality``), ``points.safetensors``
and ``embedding.json`` (the points and how they were made), and ``disk.png``, a Poincaré-disk
picture of countries and regions coloured by continent (from a 2-D construction when
``--dim`` is not 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.embedding",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--c", type=float, default=1.0, help="curvature (positive)")
    ap.add_argument("--method", choices=["construct", "optimize"], default="construct")
    ap.add_argument("--epochs", type=int, default=None, help="optimize: training epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gazetteer", type=Path, default=None, help="artefact (default: world)")
    ap.add_argument("--out", type=Path, default=Path("results/embedding"))
    ap.add_argument("--no-plot", action="store_true")
    return ap


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


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    m = run(args.dim, args.c, args.method, args.out, args.seed, args.gazetteer, args.epochs,
            not args.no_plot)
    keys = ("map", "mean_distortion", "worst_distortion", "sibling_geo_spearman", "non_finite",
            "embed_seconds", "seconds")
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
