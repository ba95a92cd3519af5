"""Quality of a tree embedding: graph-reconstruction MAP, distortion, geography, norms.

Definitions (Nickel & Kiela 2017; Sala et al. 2018):

- ``map``: for each sampled node, its neighbours are its parent and its children; every other
  node is ranked by hyperbolic distance; AP is the mean over neighbours of (neighbours ranked
  so far) / (rank), ties counted against the embedding. Nodes are sampled evenly across levels.
- ``mean_distortion``: over random node pairs, ``|d_H / (s d_T) - 1|`` averaged, with
  ``d_T`` the number of tree edges between them and one global scale ``s`` fitted by least
  squares on the ratios; ``worst_distortion`` is ``max(d_H/d_T) / min(d_H/d_T)`` (1 is perfect).
- ``sibling_geo_spearman``: per sibling group of at least 5 (at most 64 sampled), Spearman's
  correlation between hyperbolic and great-circle distance over its pairs, averaged over
  groups; also per level of the siblings.
- ``norms``: per level, min/mean/max distance from the origin; ``non_finite`` counts NaN/inf.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import spearmanr

from gazetteer.geo import haversine_km
from gazetteer.tree import children_csr

from ..geometry import dist, dist0, dist_matrix

LEVEL_NAMES = ("root", "country", "region", "subregion", "city")


def mean_average_precision(points: torch.Tensor, parent: np.ndarray, depth: np.ndarray, c: float,
                           n_nodes: int = 2000, seed: int = 0, batch: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    levels, sizes = np.unique(depth, return_counts=True)
    # an equal share per level; what small levels (root, countries) cannot fill goes to the rest
    take = np.zeros(len(levels), dtype=np.int64)
    left = n_nodes
    for k in np.argsort(sizes):
        take[k] = min(sizes[k], left // (len(levels) - (take > 0).sum()))
        left -= take[k]
    sample = np.concatenate([rng.choice(np.flatnonzero(depth == lv), size=t, replace=False)
                             for lv, t in zip(levels, take, strict=True)])
    order, start = children_csr(parent)
    ap = np.empty(len(sample))
    for b0 in range(0, len(sample), batch):
        rows = sample[b0:b0 + batch]
        d_all = dist_matrix(points[rows], points, c).numpy()
        for k, u in enumerate(rows):
            d = d_all[k]
            d[u] = np.inf
            nb = order[start[u]:start[u + 1]]
            if parent[u] >= 0:
                nb = np.r_[nb, parent[u]]
            nd = np.sort(d[nb])
            d[nb] = np.inf  # the others: non-neighbours
            others = np.sort(d[d <= nd[-1]])
            # rank of the k-th neighbour: k plus the non-neighbours no further than it
            rank = np.arange(1, len(nd) + 1) + np.searchsorted(others, nd, side="right")
            ap[b0 + k] = np.mean(np.arange(1, len(nd) + 1) / rank)
    by_level = {LEVEL_NAMES[lv] if lv < len(LEVEL_NAMES) else str(lv):
                float(ap[depth[sample] == lv].mean()) for lv in levels}
    return {"map": float(ap.mean()), "map_by_level": by_level, "map_nodes": len(sample)}


def distortion(points: torch.Tensor, ancestors: np.ndarray, depth: np.ndarray, c: float,
               n_pairs: int = 100_000, seed: int = 0) -> dict:
    """``ancestors``: ``[n, 4]`` country..city id above or equal to each node, -1 above it
    (``Gazetteer.ancestors``); the root is every pair's common ancestor."""
    rng = np.random.default_rng(seed + 1)
    n = len(depth)
    u = rng.integers(0, n, n_pairs)
    v = rng.integers(0, n, n_pairs)
    keep = u != v
    u, v = u[keep], v[keep]
    same = (ancestors[u] == ancestors[v]) & (ancestors[u] >= 0)
    lca_depth = same.sum(axis=1)  # shared levels below the root
    d_t = depth[u] + depth[v] - 2 * lca_depth
    d_h = dist(points[u], points[v], c).numpy()
    q = d_h / d_t
    t = q.sum() / (q * q).sum()
    return {"mean_distortion": float(np.abs(q * t - 1).mean()),
            "worst_distortion": float(q.max() / q.min()), "distortion_scale": float(1 / t),
            "distortion_pairs": len(q)}


def sibling_geography(points: torch.Tensor, parent: np.ndarray, depth: np.ndarray,
                      lat: np.ndarray, lon: np.ndarray, c: float, min_group: int = 5,
                      max_members: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + 2)
    order, start = children_csr(parent)
    rhos, lv = [], []
    for p in np.flatnonzero(np.diff(start) >= min_group):
        kids = order[start[p]:start[p + 1]]
        if len(kids) > max_members:
            kids = rng.choice(kids, max_members, replace=False)
        iu = np.triu_indices(len(kids), 1)
        dh = dist_matrix(points[kids], points[kids], c).numpy()[iu]
        dg = haversine_km(lat[kids][:, None], lon[kids][:, None], lat[kids][None, :],
                          lon[kids][None, :])[iu]
        if np.ptp(dg) == 0 or np.ptp(dh) == 0:
            continue
        rhos.append(spearmanr(dh, dg).statistic)
        lv.append(depth[p] + 1)
    rhos, lv = np.asarray(rhos), np.asarray(lv)
    by_level = {LEVEL_NAMES[x]: float(rhos[lv == x].mean()) for x in np.unique(lv)}
    return {"sibling_geo_spearman": float(rhos.mean()) if len(rhos) else float("nan"),
            "sibling_geo_spearman_by_level": by_level, "sibling_groups": len(rhos)}


def norms(points: torch.Tensor, depth: np.ndarray, c: float) -> dict:
    d0 = dist0(points, c).numpy()
    out = {}
    for lv in np.unique(depth):
        x = d0[depth == lv]
        out[LEVEL_NAMES[lv] if lv < len(LEVEL_NAMES) else str(lv)] = {
            "min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}
    return out


def sibling_retrieval(pts: torch.Tensor, parent: np.ndarray, depth: np.ndarray, c: float,
                      n_nodes: int = 2000, seed: int = 0) -> dict:
    """pytorch-metric-learning's ``AccuracyCalculator`` in the ball
    (:class:`~hiergeo.geometry.pml_distance.SpaceDistance`): per level below the countries, for up
    to ``n_nodes`` sampled nodes that have siblings, whether the nearest nodes of their
    level are their siblings (label = parent): ``sibling_precision_at_1`` and
    ``sibling_map_at_r`` (MAP@R, R = the node's siblings)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from ..geometry.pml_distance import SpaceDistance
    from ..geometry.spaces import make_space

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"),
                              knn_func=CustomKNN(SpaceDistance(make_space("poincare", c)),
                                                 batch_size=256))
    rng = np.random.default_rng([seed, 7])
    p1, mapr = {}, {}
    for d, name in ((2, "region"), (3, "subregion"), (4, "city")):
        ids = np.flatnonzero(depth == d)
        siblings = np.bincount(parent[ids], minlength=len(parent))[parent[ids]]
        cand = ids[siblings >= 2]
        if len(cand) == 0:
            continue
        q = np.sort(rng.choice(cand, size=min(n_nodes, len(cand)), replace=False))
        ref = np.concatenate([q, np.setdiff1d(ids, q)])  # PML wants the queries first
        res = calc.get_accuracy(pts[q], torch.from_numpy(parent[q]), pts[ref],
                                torch.from_numpy(parent[ref]), ref_includes_query=True)
        p1[name] = round(float(res["precision_at_1"]), 4)
        mapr[name] = round(float(res["mean_average_precision_at_r"]), 4)
    return {"sibling_precision_at_1": p1, "sibling_map_at_r": mapr}


def evaluate_embedding(emb, gz, *, n_map_nodes: int = 2000, n_pairs: int = 100_000,
                       seed: int = 0) -> dict:
    """All quality figures of ``emb`` (an :class:`~hiergeo.embedding.Embedding`) on ``gz``."""
    t0 = time.perf_counter()
    e = gz.entities
    parent = e["parent_id"].to_numpy(np.int64)
    depth = e["depth"].to_numpy(np.int64)
    pts = emb.points.to(torch.float64)
    non_finite = int((~torch.isfinite(pts)).sum())
    out = {"method": emb.method, "dim": emb.dim, "c": emb.c, "n_entities": len(e),
           "non_finite": non_finite}
    if non_finite:
        out["error"] = "non-finite coordinates; other figures skipped"
        return out
    out.update(mean_average_precision(pts, parent, depth, emb.c, n_map_nodes, seed))
    out.update(distortion(pts, gz.ancestors, depth, emb.c, n_pairs, seed))
    out.update(sibling_geography(pts, parent, depth, e["lat"].to_numpy(), e["lon"].to_numpy(),
                                 emb.c, seed=seed))
    out.update(sibling_retrieval(pts, parent, depth, emb.c, n_map_nodes, seed))
    out["norms"] = norms(pts, depth, emb.c)
    out["embed_seconds"] = round(emb.seconds, 3)
    out["eval_seconds"] = round(time.perf_counter() - t0, 3)
    out["seconds"] = round(emb.seconds + out["eval_seconds"], 3)
    return out
