"""Prediction by hierarchical beam descent, and flat search for comparison.

Level l's logits are ``-d(z, e) / tau_l``. An entity's probability is conditional on its
parent: ``P(e | parent)`` is the softmax of the logits over the parent's active children (for
countries, over all active countries). A path's score is the sum of its levels' conditional
log-probabilities, ``log P(country) + log P(region | country) + ...``: the log of the path's
joint probability. Neither depends on which other entities happened to be scored, so a path's
probabilities and score are the same at every beam width, and beams wide enough to keep every
path give flat search's answer.

A path whose entity has no active children (a hierarchy restricted to the entities seen in
training can have such entities above the city level) stops there: its deeper levels are -1
with probability 0, its score is its prefix's, and it competes with the longer paths as it is.

- :func:`descend`: score the countries, keep the best ``beams[0]``, score only their regions,
  keep ``beams[1]``, and so on to cities: a few hundred distances per query instead of 165k.
- :func:`flat_search`: every active entity of every level is scored and normalised within its
  sibling group; every path from a country to a leaf (a city, or an entity where a path stops)
  gets its score summed from its entities' (the "full search" the published method compares
  with).

Predicted coordinates are prediction points (:attr:`Hierarchy.point_latlon
<hiergeo.model.hierarchy.Hierarchy>`): a place of the path's deepest entity's own, which
reverse-geocodes back to it, never a centroid that may lie in a neighbour. Both functions
return a :class:`Prediction`; distances are float64 on the entity table's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gazetteer.geo import from_xyz, to_xyz
from gazetteer.keys import LEVELS

from ..model.geomodel import level_query
from .memory import memory_conditional, mix_log_prob

NLEV = len(LEVELS)


@dataclass(frozen=True)
class Search:
    """How queries are searched (the same for :func:`descend` and :func:`flat_search`, which
    ignores ``beams``).

    Attributes:
        beams: beam width per level (countries kept, regions kept, ...). Widths change which
            paths are found, never a found path's probabilities or score.
        topk: paths returned (the last level keeps ``max(beams[-1], topk)``).
        coords: ``"city"`` (the best path's prediction point: its city's, or its deepest
            entity's where it stops) or ``"weighted"`` (the mean on the sphere of the top-k
            paths' prediction points, weighted by their joint probabilities).
        threshold: joint (prefix) probability a level needs for ``confident_level``.
    """

    beams: tuple[int, ...] = (5, 5, 5, 5)
    topk: int = 5
    coords: str = "city"
    threshold: float = 0.5


@dataclass(frozen=True)
class MemoryMix:
    """The retrieval memory in a descent (:mod:`hiergeo.predict.memory`): its neighbours of
    the queries (a :class:`~hiergeo.predict.memory.Neighbours`, row i for query i), and per
    level the mixture's weight ``a_l`` (0: the model alone at that level) and temperature
    ``T'_l``."""

    neighbours: object
    weight: tuple[float, ...]
    temperature: tuple[float, ...] = (1.0,) * NLEV

    def __post_init__(self):
        object.__setattr__(self, "weight", tuple(float(a) for a in self.weight))
        object.__setattr__(self, "temperature", tuple(float(t) for t in self.temperature))

    def at(self, lvl: int) -> bool:
        """Whether the memory has weight at level ``lvl``."""
        return self.weight[lvl] > 0

    def to(self, device) -> MemoryMix:
        return MemoryMix(self.neighbours.to(device), self.weight, self.temperature)


@dataclass
class Prediction:
    """Top-k paths per query, best first.

    Attributes:
        paths: ``[B, K, 4]`` entity ids (country ... city); -1 below the level where a path
            stops, and for padding.
        score: ``[B, K]`` path log-scores: the sum of the levels' conditional
            log-probabilities, i.e. the log of the path's joint probability (-inf: padding).
        level_prob: ``[B, K, 4]`` probability of each path's entity given its parent,
            ``P(e_l | e_{l-1})`` (for the country, over all active countries); 0 where the
            path has no entity. It does not depend on the beam widths.
        lat, lon: ``[B]`` predicted coordinates, degrees.
        confident_level: ``[B]`` deepest level (0 country ... 3 city) at which the best path's
            prefix probability (see :attr:`path_prob`) reaches the threshold; -1 if not even
            the country's does.
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

    @property
    def path_prob(self) -> np.ndarray:
        """``[B, K, 4]`` joint probability of each path's prefix down to each level,
        ``exp(cumsum(log level_prob))``: P(country), P(country, region), ...; its last
        non-zero entry is ``exp(score)``."""
        return np.cumprod(self.level_prob, axis=2)

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


def _check_hierarchy(hier):
    if len(hier.level_ids[0]) == 0:
        raise ValueError("the hierarchy has no active country: nothing to predict")


# -- steps shared by descent and flat search ------------------------------------------------
def log_softmax_groups(logit: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Log-softmax of ``logit [..., n]`` within the groups ``group [n]`` (values in
    ``[0, n_groups)``) of its last dimension: each entry's log-probability among its
    siblings. Same shape as ``logit``."""
    idx = group.expand_as(logit)
    shape = (*logit.shape[:-1], n_groups)
    mx = torch.full(shape, -torch.inf, dtype=logit.dtype, device=logit.device).scatter_reduce(
        -1, idx, logit, reduce="amax")
    shifted = logit - mx.gather(-1, idx)
    se = torch.zeros(shape, dtype=logit.dtype, device=logit.device).scatter_add(
        -1, idx, shifted.exp())
    return shifted - se.log().gather(-1, idx)


def mix_level(logp: torch.Tensor, p_mem: torch.Tensor, a: float, t: float,
              group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """One level's log-probabilities with the retrieval memory (:mod:`.memory`): in each
    sibling group (``group``, as in :func:`log_softmax_groups`) where the memory has
    neighbours (``p_mem`` not NaN), ``log`` of ``M ** (1/t)`` renormalised over the group,
    with ``M = (1 - a) exp(logp) + a p_mem``; elsewhere ``logp`` unchanged."""
    mixed = log_softmax_groups(mix_log_prob(logp, p_mem, a) / t, group, n_groups)
    return torch.where(torch.isnan(p_mem), logp, mixed)


def _deepest(paths: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` paths -> ``[...]`` id of each path's deepest entity (-1 for padding);
    a path is a prefix of ids followed by -1s."""
    n = (paths >= 0).sum(-1)
    last = paths.gather(-1, (n - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(n > 0, last, -1)


def _finish(paths, score, prob, hier, search: Search, comparisons) -> Prediction:
    """Coordinates and confident level from the top paths (tensors -> numpy)."""
    topk, coords, threshold = search.topk, search.coords, search.threshold
    paths, score, prob = paths[:, :topk], score[:, :topk], prob[:, :topk]
    # padding paths have no entity; their coordinates get weight 0 (or are never the best)
    ll = hier.point_latlon[_deepest(paths).clamp_min(0)].cpu().numpy()
    if coords == "city":
        lat, lon = ll[:, 0, 0], ll[:, 0, 1]
    elif coords == "weighted":
        w = torch.softmax(score, dim=1).cpu().numpy()  # -inf padding gets weight 0
        xyz = to_xyz(ll[..., 0].reshape(-1), ll[..., 1].reshape(-1)).reshape(*ll.shape[:2], 3)
        lat, lon = from_xyz((w[..., None] * xyz).sum(1))
    else:
        raise ValueError(f"coords must be 'city' or 'weighted', not {coords!r}")
    ok = (torch.cumprod(prob[:, 0, :], dim=1) >= threshold).cpu().numpy()
    confident = np.cumprod(ok, axis=1).sum(axis=1) - 1
    return Prediction(paths=paths.cpu().numpy(), score=score.cpu().numpy(),
                      level_prob=prob.cpu().numpy(), lat=np.asarray(lat, np.float64),
                      lon=np.asarray(lon, np.float64), confident_level=confident,
                      comparisons=comparisons.cpu().numpy())


# -- descent ------------------------------------------------------------------------------
def _keep(beams, lvl: int, topk: int) -> int:
    """Paths kept after level ``lvl``: its beam width, and at least ``topk`` at the last."""
    return int(beams[lvl]) if lvl < NLEV - 1 else max(int(beams[lvl]), topk)


def expand_beams(entity: torch.Tensor, alive: torch.Tensor, hier
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates one level down from flat beams ``entity [M]`` (-1: the path has stopped).

    Each live beam gives its entity's active children, or, if it has none (or has already
    stopped), one candidate ``-1`` that carries the path on unchanged. Returns ``(beam
    [T], child [T])``: the beam each candidate extends, in beam order, and its entity id.
    """
    has = alive & (entity >= 0)
    n_kids = torch.where(has, hier.child_count[entity.clamp_min(0)], 0)
    stops = alive & (n_kids == 0)
    cnt = n_kids + stops.long()
    beam = torch.repeat_interleave(torch.arange(len(entity), device=entity.device), cnt)
    offset = torch.arange(len(beam), device=entity.device) - (torch.cumsum(cnt, 0) - cnt)[beam]
    child = torch.full_like(beam, -1)
    kid = ~stops[beam]
    child[kid] = hier.child_list[hier.child_start[entity[beam[kid]]] + offset[kid]]
    return beam, child


def topk_per_query(score: torch.Tensor, query: torch.Tensor, n_queries: int, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of candidates ``score [T]`` grouped by ``query [T]`` (non-decreasing).

    Returns ``(pick [B, k'], alive [B, k'])``: indices into the candidates, best first, and
    whether each slot holds a candidate (a query with fewer than ``k`` fills with dead slots
    whose pick is meaningless); ``k' = min(k, most candidates of any query)``.
    """
    T = len(score)
    cnt = torch.bincount(query, minlength=n_queries)
    first = torch.cumsum(cnt, 0) - cnt
    width = max(int(cnt.max()), 1) if T else 1
    dense = torch.full((n_queries, width), -torch.inf, dtype=score.dtype, device=score.device)
    dense[query, torch.arange(T, device=score.device) - first[query]] = score
    top = dense.topk(min(k, width), dim=1)
    pick = (first[:, None] + top.indices).clamp(0, max(T - 1, 0))
    return pick, torch.isfinite(top.values)


def _countries(z, entities, space, hier, tau: float, keep: int, mix: MemoryMix | None):
    """The first level: every active country scored, the best ``keep`` per query kept.
    Returns the paths ``hist [B, W, 4]``, their levels' probabilities ``prob``, their
    scores ``[B, W]`` and the comparisons made ``[B]``."""
    dev, B, ids0 = entities.device, len(z), hier.level_ids[0]
    logp = torch.log_softmax(-space.matrix(level_query(z, 0), entities[ids0]) / tau, dim=1)
    if mix is not None and mix.at(0):
        q0 = torch.arange(B, device=dev).repeat_interleave(len(ids0))
        pm = memory_conditional(mix.neighbours, q0, ids0.repeat(B), 0, hier).reshape(
            B, len(ids0))
        logp = mix_level(logp, pm, mix.weight[0], mix.temperature[0], torch.zeros_like(ids0),
                         1)
    top = logp.topk(min(keep, len(ids0)), dim=1)
    W = top.indices.shape[1]
    hist = torch.full((B, W, NLEV), -1, dtype=torch.long, device=dev)
    prob = torch.zeros((B, W, NLEV), dtype=torch.float64, device=dev)
    hist[:, :, 0], prob[:, :, 0] = ids0[top.indices], top.values.exp()
    comparisons = torch.full((B,), len(ids0), dtype=torch.long, device=dev)
    return hist, prob, top.values, comparisons


def _children_logp(z, entities, space, hier, tau: float, lvl: int, beam, child, query,
                   n_beams: int, mix: MemoryMix | None) -> torch.Tensor:
    """``log P(child | parent)`` of each candidate ``child [T]`` of beam ``beam [T]`` (query
    ``query [T]``) at level ``lvl``: a softmax over the beam's children (siblings share a
    beam), mixed with the memory where it has weight; 0 for a stopped path's carry-over
    candidate (-1)."""
    real = child >= 0
    logp = torch.zeros(len(child), dtype=torch.float64, device=entities.device)
    logit = -space.pair(level_query(z, lvl)[query[real]], entities[child[real]]) / tau
    logp[real] = log_softmax_groups(logit, beam[real], n_beams)
    if mix is not None and mix.at(lvl):
        pm = memory_conditional(mix.neighbours, query[real], child[real], lvl, hier)
        logp[real] = mix_level(logp[real], pm, mix.weight[lvl], mix.temperature[lvl],
                               beam[real], n_beams)
    return logp


def _keep_best(hist, prob, score, lvl: int, beam, child, query, logp, keep: int):
    """Extend the paths ``hist``/``prob``/``score`` (``[B, W, ...]``) by their candidates
    at level ``lvl`` and keep the ``keep`` best of each query by joint log-probability;
    slots without a candidate are padding (-1, probability 0, score -inf)."""
    B, W = hist.shape[:2]
    cand_score = score.reshape(-1)[beam] + logp
    pick, alive = topk_per_query(cand_score, query, B, keep)
    src = beam[pick]
    hist = hist.reshape(B * W, NLEV)[src]  # indexing copies: safe to write below
    prob = prob.reshape(B * W, NLEV)[src]
    hist[:, :, lvl] = child[pick]
    prob[:, :, lvl] = torch.where(child[pick] >= 0, logp[pick].exp(), 0.0)
    hist[~alive], prob[~alive] = -1, 0.0
    return hist, prob, torch.where(alive, cand_score[pick], -torch.inf)


@torch.no_grad()
def descend(z: torch.Tensor, entities: torch.Tensor, space, hier, taus,
            search: Search = Search(), mix: MemoryMix | None = None) -> Prediction:
    """Hierarchical beam descent for query points ``z [B, D]``, or ``[B, 4, D]`` with one
    point per level (see the module docstring).

    Args:
        entities: ``[N, D]`` entity table (float64), row i = entity id i.
        space: the :mod:`~hiergeo.geometry.spaces` space of ``z`` and ``entities``.
        hier: a :class:`~hiergeo.model.hierarchy.Hierarchy` on the same device.
        taus: temperature per level.
        search: beams, paths returned, coordinates, confidence threshold (:class:`Search`).
        mix: the retrieval memory's neighbours and mixture (:class:`MemoryMix`); None: the
            model alone.
    """
    beams, topk = search.beams, search.topk
    _check(taus, beams)
    _check_hierarchy(hier)
    dev = entities.device
    z = z.to(device=dev, dtype=torch.float64)
    B = len(z)
    mix = None if mix is None else mix.to(dev)
    hist, prob, score, comparisons = _countries(z, entities, space, hier, taus[0],
                                                _keep(beams, 0, topk), mix)
    for lvl in range(1, NLEV):
        W = hist.shape[1]
        # every live path's entity's children (or one carry-over candidate, -1)
        beam, child = expand_beams(hist[:, :, lvl - 1].reshape(-1),
                                   torch.isfinite(score).reshape(-1), hier)
        query = torch.div(beam, W, rounding_mode="floor")
        logp = _children_logp(z, entities, space, hier, taus[lvl], lvl, beam, child, query,
                              B * W, mix)
        comparisons += torch.bincount(query[child >= 0], minlength=B)
        hist, prob, score = _keep_best(hist, prob, score, lvl, beam, child, query, logp,
                                       _keep(beams, lvl, topk))
    return _finish(hist, score, prob, hier, search, comparisons)


# -- flat search --------------------------------------------------------------------------
def _sibling_groups(hier) -> list[tuple[torch.Tensor, int]]:
    """Per level, each active entity's sibling group (its parent's position in the level
    above; all countries are one group) and the number of groups."""
    out = [(torch.zeros_like(hier.level_ids[0]), 1)]
    for lvl in range(1, NLEV):
        parent = hier.parent[hier.level_ids[lvl]]
        out.append((hier.pos_in_level[parent], len(hier.level_ids[lvl - 1])))
    return out


def _leaf_paths(hier) -> tuple[torch.Tensor, torch.Tensor]:
    """Every path from a country to an active leaf (an entity without active children):
    ``(paths [L, 4] ids, pos [L, 4] positions in each level's ids)``, -1 below the leaf."""
    ids = torch.cat(hier.level_ids)
    leaves = ids[hier.child_count[ids] == 0].sort().values
    paths = hier.ancestors[leaves]
    pos = torch.where(paths >= 0, hier.pos_in_level[paths.clamp_min(0)], -1)
    return paths, pos


@torch.no_grad()
def flat_search(z: torch.Tensor, entities: torch.Tensor, space, hier, taus,
                search: Search = Search(), chunk: int = 64) -> Prediction:
    """Score every active entity of every level, normalise within sibling groups, and rank
    every country-to-leaf path by the sum of its entities' conditional log-probabilities.
    Arguments as :func:`descend` (``search.beams`` unused); queries are processed ``chunk``
    at a time to bound memory."""
    topk = search.topk
    _check(taus)
    _check_hierarchy(hier)
    dev = entities.device
    z = z.to(device=dev, dtype=torch.float64)
    tables = [entities[ids] for ids in hier.level_ids]
    groups = _sibling_groups(hier)
    paths_all, pos = _leaf_paths(hier)
    on = pos >= 0
    n_total = sum(len(ids) for ids in hier.level_ids)
    parts = []
    for s in range(0, len(z), chunk):
        zc = z[s:s + chunk]
        logps = [log_softmax_groups(-space.matrix(level_query(zc, j), t) / tau, g, ng)
                 for j, (t, tau, (g, ng)) in enumerate(zip(tables, taus, groups, strict=True))]
        path_score = torch.zeros((len(zc), len(pos)), dtype=torch.float64, device=dev)
        for j, lp in enumerate(logps):
            path_score += torch.where(on[:, j], lp[:, pos[:, j].clamp_min(0)], 0.0)
        top = path_score.topk(min(topk, path_score.shape[1]), dim=1)
        paths = paths_all[top.indices]  # [b, k, 4]
        tpos = pos[top.indices]
        prob = torch.stack([torch.where(tpos[..., j] >= 0,
                                        lp.gather(1, tpos[..., j].clamp_min(0)).exp(), 0.0)
                            for j, lp in enumerate(logps)], dim=-1)
        comps = torch.full((len(zc),), n_total, dtype=torch.long, device=dev)
        parts.append(_finish(paths, top.values, prob, hier, search, comps))
    if not parts:
        raise ValueError("no queries")
    return Prediction.concat(parts)


@torch.no_grad()
def predict(model, x: torch.Tensor, hier, taus, *, method: str = "descent",
            batch_size: int = 1024, memory=None, neighbours=None, from_features: bool = False,
            chunk: int = 64, **search) -> Prediction:
    """Run ``model`` on inputs ``x`` in batches and predict by ``descent`` or ``flat``.

    ``taus`` are the training temperatures; the model's calibration
    (``model.level_temperature``, fitted by :func:`hiergeo.predict.calibration.fit_temperatures`;
    all 1 before) scales them, so the probabilities are the calibrated ones. ``memory``: a
    :class:`~hiergeo.predict.memory.Memory` of training features, mixed into descent with
    the model's fitted ``memory_weight`` and ``mixture_temperature`` (weights all 0: the
    memory is not searched); flat search scores the model alone. ``neighbours``: the
    memory's :class:`~hiergeo.predict.memory.Neighbours` for every row of ``x`` when already
    searched (a search is the costly part at scale); None: searched a batch at a time.
    ``from_features``: ``x`` are already the encoder's output (a timm encoder's features,
    computed elsewhere), so the encoder is not run. ``chunk``: flat search's queries at a
    time. ``search``: the :class:`Search` fields (``beams``, ``topk``, ``coords``,
    ``threshold``) as keywords."""
    if method not in ("descent", "flat"):
        raise ValueError(f"method must be 'descent' or 'flat', not {method!r}")
    settings = Search(**{k: tuple(v) if k == "beams" else v for k, v in search.items()})
    taus = [float(t) * float(c) for t, c in zip(taus, model.level_temperature, strict=True)]
    was = model.training
    model.eval()
    dev = model.entities.device
    use_memory = memory is not None and method == "descent" and model.uses_memory
    if neighbours is not None and len(neighbours.ids) != len(x):
        raise ValueError(f"neighbours for {len(neighbours.ids)} rows, {len(x)} inputs")
    parts = []
    try:
        for s in range(0, len(x), batch_size):
            f = x[s:s + batch_size].to(dev)
            f = f.float() if from_features else model.encoder(f)
            z = model.query_from_features(f)
            table = (z, model.entities.detach(), model.space, hier, taus)
            if method == "flat":
                parts.append(flat_search(*table, settings, chunk=chunk))
                continue
            mix = None
            if use_memory:
                nb = (memory.search(f) if neighbours is None
                      else neighbours[s:s + batch_size])
                mix = MemoryMix(nb, model.memory_weight, model.mixture_temperature)
            parts.append(descend(*table, settings, mix))
    finally:
        model.train(was)
    if not parts:
        raise ValueError("no inputs to predict")
    return Prediction.concat(parts)
