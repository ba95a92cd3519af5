"""Prediction by hierarchical beam descent, and flat search for comparison.

Level l's logits are ``-d(z, e) / tau_l``; its log-probabilities are the logits minus their
logsumexp over the entities *scored* at that level. A path's score is the sum of its levels'
log-probabilities, so with beams wide enough to score every entity, descent and flat search
give the same answer.

- :func:`descend`: score the countries, keep the best ``beams[0]``, score only their regions,
  keep ``beams[1]``, and so on to cities: a few hundred distances per query instead of 165k.
- :func:`flat_search`: every active entity of every level is scored, and every city's path
  score is summed from its ancestors' (the "full search" the published method compares with).

Both return a :class:`Prediction`; distances are float64 on the entity table's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gazetteer.geo import from_xyz, to_xyz
from gazetteer.keys import LEVELS

NLEV = len(LEVELS)


@dataclass
class Prediction:
    """Top-k paths per query, best first.

    Attributes:
        paths: ``[B, K, 4]`` entity ids (country ... city), -1 for padding.
        score: ``[B, K]`` path log-scores (sum of the levels' log-probabilities).
        level_prob: ``[B, K, 4]`` probability of each path's entity at each level
            (normalised over the entities scored at that level).
        lat, lon: ``[B]`` predicted coordinates, degrees.
        confident_level: ``[B]`` deepest level (0 country ... 3 city) whose probability, and
            every shallower one's, reaches the threshold; -1 if not even the country does.
        comparisons: ``[B]`` entity distances computed per query.
    """

    paths: np.ndarray
    score: np.ndarray
    level_prob: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    confident_level: np.ndarray
    comparisons: np.ndarray

    def __len__(self) -> int:
        return len(self.lat)

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        k = max(p.paths.shape[1] for p in parts)

        def pad(a, fill):
            if a.shape[1] == k:
                return a
            shape = (a.shape[0], k - a.shape[1]) + a.shape[2:]
            return np.concatenate([a, np.full(shape, fill, a.dtype)], axis=1)

        return Prediction(
            paths=np.concatenate([pad(p.paths, -1) for p in parts]),
            score=np.concatenate([pad(p.score, -np.inf) for p in parts]),
            level_prob=np.concatenate([pad(p.level_prob, 0.0) for p in parts]),
            **{f: np.concatenate([getattr(p, f) for p in parts])
               for f in ("lat", "lon", "confident_level", "comparisons")})


def _check(taus, beams=None):
    if len(taus) != NLEV or not all(t > 0 for t in taus):
        raise ValueError(f"need {NLEV} positive temperatures, got {taus}")
    if beams is not None and (len(beams) != NLEV or not all(int(b) >= 1 for b in beams)):
        raise ValueError(f"need {NLEV} beam widths >= 1, got {beams}")


def _finish(paths, score, prob, hier, topk, coords, threshold, comparisons) -> Prediction:
    """Coordinates and confident level from the top paths (tensors -> numpy)."""
    paths, score, prob = paths[:, :topk], score[:, :topk], prob[:, :topk]
    city = paths[:, :, NLEV - 1]
    ll = hier.latlon[city.clamp_min(0)].cpu().numpy()
    if coords == "city":
        lat, lon = ll[:, 0, 0], ll[:, 0, 1]
    elif coords == "weighted":
        w = torch.softmax(score, dim=1).cpu().numpy()  # -inf padding gets weight 0
        xyz = to_xyz(ll[..., 0].reshape(-1), ll[..., 1].reshape(-1)).reshape(*ll.shape[:2], 3)
        lat, lon = from_xyz((w[..., None] * xyz).sum(1))
    else:
        raise ValueError(f"coords must be 'city' or 'weighted', not {coords!r}")
    ok = (prob[:, 0, :] >= threshold).cpu().numpy()
    confident = np.cumprod(ok, axis=1).sum(axis=1) - 1
    return Prediction(paths=paths.cpu().numpy(), score=score.cpu().numpy(),
                      level_prob=prob.cpu().numpy(), lat=np.asarray(lat, np.float64),
                      lon=np.asarray(lon, np.float64), confident_level=confident,
                      comparisons=comparisons.cpu().numpy())


@torch.no_grad()
def descend(z: torch.Tensor, entities: torch.Tensor, space, hier, taus, beams=(5, 5, 5, 5),
            topk: int = 5, coords: str = "city", threshold: float = 0.5) -> Prediction:
    """Hierarchical beam descent for query points ``z [B, D]`` (see the module docstring).

    Args:
        entities: ``[N, D]`` entity table (float64), row i = entity id i.
        space: the :mod:`~hiergeo.geometry.spaces` space of ``z`` and ``entities``.
        hier: a :class:`~hiergeo.model.hierarchy.Hierarchy` on the same device.
        taus: temperature per level.
        beams: beam width per level (countries kept, regions kept, ...).
        topk: paths returned (the last level keeps ``max(beams[-1], topk)``).
        coords: ``"city"`` (centroid of the best path's city) or ``"weighted"``
            (probability-weighted mean of the top-k cities on the sphere).
        threshold: probability a level needs for ``confident_level``.
    """
    _check(taus, beams)
    dev = entities.device
    z = z.to(device=dev, dtype=torch.float64)
    B = len(z)
    ids0 = hier.level_ids[0]
    logp = torch.log_softmax(-space.matrix(z, entities[ids0]) / taus[0], dim=1)
    w = min(int(beams[0]) if NLEV > 1 else max(int(beams[0]), topk), len(ids0))
    top = logp.topk(w, dim=1)
    beam_ids = ids0[top.indices]
    beam_score = top.values
    hist = torch.full((B, w, NLEV), -1, dtype=torch.long, device=dev)
    prob = torch.zeros((B, w, NLEV), dtype=torch.float64, device=dev)
    hist[:, :, 0], prob[:, :, 0] = beam_ids, top.values.exp()
    comparisons = torch.full((B,), len(ids0), dtype=torch.long, device=dev)
    for lvl in range(1, NLEV):
        W = beam_ids.shape[1]
        bid = beam_ids.reshape(-1)
        cnt = torch.where(bid >= 0, hier.child_count[bid.clamp_min(0)], 0)
        total = int(cnt.sum())
        pair = torch.repeat_interleave(torch.arange(B * W, device=dev), cnt)
        first = torch.cumsum(cnt, 0) - cnt
        off = torch.arange(total, device=dev) - first[pair]
        cid = hier.child_list[hier.child_start[bid[pair]] + off]
        q = torch.div(pair, W, rounding_mode="floor")
        logit = -space.pair(z[q], entities[cid]) / taus[lvl]
        mx = torch.full((B,), -torch.inf, dtype=torch.float64, device=dev).scatter_reduce(
            0, q, logit, reduce="amax")
        se = torch.zeros(B, dtype=torch.float64, device=dev).index_add(
            0, q, torch.exp(logit - mx[q]))
        lp = logit - (mx + se.log())[q]
        score = beam_score.reshape(-1)[pair] + lp
        qcnt = cnt.view(B, W).sum(1)
        comparisons += qcnt
        qfirst = torch.cumsum(qcnt, 0) - qcnt
        posq = torch.arange(total, device=dev) - qfirst[q]
        M = max(int(qcnt.max()), 1) if B else 1
        dense = torch.full((B, M), -torch.inf, dtype=torch.float64, device=dev)
        dense[q, posq] = score
        keep = int(beams[lvl]) if lvl < NLEV - 1 else max(int(beams[lvl]), topk)
        top = dense.topk(min(keep, M), dim=1)
        alive = torch.isfinite(top.values)
        flat = (qfirst[:, None] + top.indices).clamp_max(max(total - 1, 0))
        src = pair[flat] if total else torch.zeros_like(flat)
        hist = hist.reshape(B * W, NLEV)[src].clone()
        prob = prob.reshape(B * W, NLEV)[src].clone()
        hist[:, :, lvl] = cid[flat] if total else -1
        prob[:, :, lvl] = lp[flat].exp() if total else 0.0
        hist[~alive] = -1
        prob[~alive] = 0.0
        beam_ids = torch.where(alive, hist[:, :, lvl], -1)
        beam_score = torch.where(alive, top.values, -torch.inf)
    return _finish(hist, beam_score, prob, hier, topk, coords, threshold, comparisons)


@torch.no_grad()
def flat_search(z: torch.Tensor, entities: torch.Tensor, space, hier, taus, topk: int = 5,
                coords: str = "city", threshold: float = 0.5,
                chunk: int = 64) -> Prediction:
    """Score every active entity of every level; a city's path score sums its ancestors'
    log-probabilities. Queries are processed ``chunk`` at a time to bound memory."""
    _check(taus)
    dev = entities.device
    z = z.to(device=dev, dtype=torch.float64)
    tables = [entities[ids] for ids in hier.level_ids]
    anc = hier.ancestors[hier.level_ids[-1]]  # [n_city, 4] ids
    anc_pos = torch.stack([hier.pos_in_level[anc[:, j]] for j in range(NLEV)], 1)
    n_total = sum(len(ids) for ids in hier.level_ids)
    parts = []
    for s in range(0, len(z), chunk):
        zc = z[s:s + chunk]
        logps = [torch.log_softmax(-space.matrix(zc, t) / tau, dim=1)
                 for t, tau in zip(tables, taus, strict=True)]
        city_score = sum(lp[:, anc_pos[:, j]] for j, lp in enumerate(logps))
        top = city_score.topk(min(topk, city_score.shape[1]), dim=1)
        paths = anc[top.indices]  # [b, k, 4]
        prob = torch.stack([logps[j].gather(1, anc_pos[top.indices][:, :, j]).exp()
                            for j in range(NLEV)], dim=-1)
        comps = torch.full((len(zc),), n_total, dtype=torch.long, device=dev)
        parts.append(_finish(paths, top.values, prob, hier, topk, coords, threshold, comps))
    if not parts:
        raise ValueError("no queries")
    return Prediction.concat(parts)


@torch.no_grad()
def predict(model, x: torch.Tensor, hier, taus, *, method: str = "descent",
            batch_size: int = 1024, **kwargs) -> Prediction:
    """Run ``model`` on inputs ``x`` in batches and predict by ``descent`` or ``flat``.

    ``taus`` are the training temperatures; the model's calibration
    (``model.level_temperature``, fitted by :func:`hiergeo.predict.calibration.fit_temperatures`;
    all 1 before) scales them, so the probabilities are the calibrated ones."""
    if method not in ("descent", "flat"):
        raise ValueError(f"method must be 'descent' or 'flat', not {method!r}")
    fn = descend if method == "descent" else flat_search
    taus = [float(t) * float(c) for t, c in zip(taus, model.level_temperature, strict=True)]
    was = model.training
    model.eval()
    dev = model.entities.device
    parts = []
    try:
        for s in range(0, len(x), batch_size):
            z = model(x[s:s + batch_size].to(dev))
            parts.append(fn(z, model.entities.detach(), model.space, hier, taus, **kwargs))
    finally:
        model.train(was)
    if not parts:
        raise ValueError("no inputs to predict")
    return Prediction.concat(parts)
