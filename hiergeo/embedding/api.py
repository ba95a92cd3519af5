"""``embed_tree``: one entry point for both methods, and the :class:`Embedding` they return."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import dist0, max_dist0, project

METHODS = ("construct", "optimize")
#: Bump when either method's output changes for the same inputs: it keys the cache.
EMBED_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Embedding:
    """Entity points in the Poincaré ball of curvature -c.

    Attributes:
        points: float64 tensor ``[n_entities, dim]``; row i is entity id i.
        c: curvature (positive).
        method: ``"construct"`` or ``"optimize"``.
        seconds: wall time of the embedding itself (not of evaluation).
        info: method details (edge length, separation, training losses...).
    """

    points: torch.Tensor
    c: float
    method: str
    seconds: float
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def save(self, folder: str | Path) -> None:
        """``points.safetensors`` plus ``embedding.json``, written atomically (temporary
        names unique to the process, so two processes may save the same folder at once)."""
        from safetensors.torch import save_file

        from ..files import atomic_write_text, temporary_names

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with temporary_names(folder / "points.safetensors") as (tmp,):
            save_file({"points": self.points.contiguous()}, str(tmp))
            tmp.replace(folder / "points.safetensors")
        meta = {k: v for k, v in asdict(self).items() if k != "points"}
        meta["dim"] = self.dim
        atomic_write_text(folder / "embedding.json",
                          json.dumps(meta, indent=2, default=float) + "\n")


def load_embedding(folder: str | Path) -> Embedding:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "embedding.json").read_text())
    points = load_file(str(folder / "points.safetensors"))["points"]
    return Embedding(points=points, c=meta["c"], method=meta["method"],
                     seconds=meta["seconds"], info=meta.get("info", {}))


def tree_arrays(gz) -> dict[str, np.ndarray]:
    """Parent, depth and centroid of every entity, by id."""
    e = gz.entities
    return {"parent": e["parent_id"].to_numpy(np.int64), "depth": e["depth"].to_numpy(np.int64),
            "lat": e["lat"].to_numpy(np.float64), "lon": e["lon"].to_numpy(np.float64)}


def embed_tree(gz, dim: int = 16, c: float = 1.0, method: str = "construct", *,
               seed: int = 0, **options) -> Embedding:
    """Embed a gazetteer's entity tree in the Poincaré ball.

    Args:
        gz: a :class:`gazetteer.Gazetteer` (or anything with an ``entities`` table holding
            ``id, parent_id, depth, lat, lon``).
        dim: dimension of the ball (>= 2).
        c: curvature, positive (the ball has curvature -c).
        method: ``"construct"`` (combinatorial, the default) or ``"optimize"`` (Nickel & Kiela
            2017 with Riemannian Adam, the baseline).
        seed: random seed; both methods are deterministic for a given seed.
        **options: passed to :func:`~hiergeo.embedding.construct.construct` (e.g.
            ``radius_budget``, ``cone_deg``) or :func:`~hiergeo.embedding.optimize.optimize`
            (e.g. ``epochs``, ``lr``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    if not c > 0:
        raise ValueError(f"curvature c must be positive, got {c}")
    tree = tree_arrays(gz)
    t0 = time.perf_counter()
    if method == "construct":
        from .construct import construct

        budget = options.pop("radius_budget", None)
        if budget is None:
            # 94% of what float64 projection allows (12.2 for c = 1): 11.5
            budget = 0.94 * max_dist0(torch.float64, 1.0)
        pts, info = construct(tree["parent"], tree["depth"], tree["lat"], tree["lon"], dim=dim,
                              radius_budget=budget, seed=seed, **options)
        points = torch.from_numpy(pts) / math.sqrt(c)
    else:
        from .optimize import optimize

        points, info = optimize(tree["parent"], dim=dim, c=c, seed=seed, **options)
    points = project(points.to(torch.float64), c)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(points).all():
        raise FloatingPointError(f"{method} embedding produced non-finite values")
    info["max_dist0"] = float(dist0(points, c).max())
    return Embedding(points=points, c=float(c), method=method, seconds=seconds, info=info)


def embedding_key(gz, dim: int, c: float, method: str, seed: int, **options) -> str:
    """A hash of everything the embedding depends on: the tree (parents, depths,
    centroids), the settings and :data:`EMBED_VERSION`."""
    h = hashlib.sha256()
    for a in tree_arrays(gz).values():
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps({"dim": dim, "c": c, "method": method, "seed": seed,
                         "options": options, "version": EMBED_VERSION},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cached_embed_tree(gz, dim: int = 16, c: float = 1.0, method: str = "construct", *,
                      seed: int = 0, cache_dir: str | Path | None = None,
                      **options) -> Embedding:
    """:func:`embed_tree`, kept on disk by :func:`embedding_key` (under
    ``$HIERGEO_CACHE/embeddings/``): the first call of a setting embeds (the OSV-5M preset's
    tree's time and memory: results/benchmarks/README.md#training-at-scale), later ones, and
    every other process of a run, read it back."""
    if cache_dir is None:
        from gazetteer.artefact import default_cache_dir

        cache_dir = default_cache_dir() / "embeddings"
    folder = Path(cache_dir) / embedding_key(gz, dim, c, method, seed, **options)
    if (folder / "embedding.json").exists() and (folder / "points.safetensors").exists():
        emb = load_embedding(folder)
        if emb.points.shape == (len(gz.entities), dim):
            return emb
        log.warning("%s holds an embedding of another shape: embedding again", folder)
    log.info("embedding the tree (%d entities, %s, dim %d) into the cache %s",
             len(gz.entities), method, dim, folder)
    emb = embed_tree(gz, dim=dim, c=c, method=method, seed=seed, **options)
    try:
        emb.save(folder)
    except OSError as exc:  # a read-only cache costs time, not the run
        log.warning("could not cache the tree embedding in %s: %s", folder, exc)
    return emb
