"""Retrieval memory: the training samples' features, mixed into each level's probability.

Beam descent scores a child ``e`` of a parent ``p`` by the model's ``P_model(e | p)``. With a
memory, the ``k`` training samples whose encoder features are most similar (cosine) to the
query's vote too: neighbour ``n`` weighs ``w_n = exp((s_n - s_1) / temperature)`` (``s_1`` the
best similarity), and

    P_mem(e | p) = sum of w_n over neighbours labelled e / sum over neighbours under p
    M(e | p)     = (1 - a_l) P_model(e | p) + a_l P_mem(e | p)
    P(e | p)     = M(e | p) ** (1 / T'_l) / sum over p's children of the same

where the neighbours under ``p`` have any weight; elsewhere ``M(e | p) = P_model(e | p)``.
``P`` sums to one over ``p``'s active children, so a path's score is still the log of its
joint probability, the same at every beam width. Both ``a_l`` and ``T'_l`` are fitted per
level on the validation split after training
(:func:`hiergeo.predict.calibration.fit_memory_weights`): ``a_l`` on a grid, for the
accuracy of the true entity given its true parent (the likelihood would choose a smaller
weight and lose accuracy, since a memory's probabilities are often exactly 0 or 1: see
results/benchmarks/README.md#retrieval-memory); then ``T'_l`` in [0.1, 10], which keeps the
mixture's ranking, by likelihood, so that the probabilities are calibrated. They are stored
in the model (``GeoModel.memory_weight``, ``mixture_temperature``); weight 0 (the default,
and the fit where the memory does not help) is the model alone.

This is nearest-neighbour retrieval (OSV-5M's retrieval baseline; see
:class:`hiergeo.baselines.KNNRetrieval`) used inside the hierarchy, as kNN-LM mixes a
language model with a datastore. Why it is on by default, and what it adds on the names
benchmark: results/benchmarks/README.md#defaults-and-why. Memory: the features are kept in
float16, ``N x d x 2`` bytes (OSV-5M's 4.9M training images of 1024-d: 10 GB); a search
costs ``N x d`` multiply-adds per query, tiled so that its working memory is bounded
(:func:`chunked_topk_cosine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gazetteer.keys import LEVELS

NLEV = len(LEVELS)


def chunked_topk_cosine(q: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 2048,
                        tile: int = 262_144) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` dot products of each row of ``q [n, d]`` with ``ref [m, d]`` (pass unit rows
    for cosine similarity: :class:`~hiergeo.baselines.KNNRetrieval` and :class:`Memory`
    normalise them once): ``chunk``
    queries against ``tile`` references at a time, merging a running top-k, so memory is
    ``chunk x tile`` floats (2 GiB at the defaults) whatever ``m``. Returns
    ``(values, indices) [n, k]``. References in another dtype (the memory's float16) are
    converted a tile at a time: that copy adds ``tile x d`` floats (1 GiB at d = 1024)."""
    k = min(k, len(ref))
    vals, idx = [], []
    for s in range(0, len(q), chunk):
        qc = q[s:s + chunk].float()
        best_v = torch.full((len(qc), k), -torch.inf, device=q.device)
        best_i = torch.zeros((len(qc), k), dtype=torch.long, device=q.device)
        for t in range(0, len(ref), tile):
            sim = qc @ ref[t:t + tile].to(qc.dtype).T
            top = sim.topk(min(k, sim.shape[1]), dim=1)
            v = torch.cat([best_v, top.values], 1)
            i = torch.cat([best_i, top.indices + t], 1)
            keep = v.topk(k, dim=1)
            best_v, best_i = keep.values, i.gather(1, keep.indices)
        vals.append(best_v)
        idx.append(best_i)
    return torch.cat(vals), torch.cat(idx)


@dataclass
class Neighbours:
    """The memory's answer for a batch of queries: ``ids [B, k, 4]`` the neighbours' entity
    ids (-1 where a neighbour has no entity at a level), ``weight [B, k]`` float64."""

    ids: torch.Tensor
    weight: torch.Tensor

    def to(self, device) -> Neighbours:
        return Neighbours(self.ids.to(device), self.weight.to(device))

    def __getitem__(self, rows) -> Neighbours:
        return Neighbours(self.ids[rows], self.weight[rows])


class Memory:
    """Training samples' encoder features ``[N, d]`` and entity ids ``[N, 4]``.

    Args:
        features: one row per training sample, in the encoder's feature space (what
            ``GeoModel.encoder`` returns).
        ids: their entity ids per level (-1: none).
        k: neighbours per query.
        temperature: of the neighbour weights (cosine similarity units).
        device: where the features are kept and searched.
        chunk: rows normalised at a time while building.
    """

    def __init__(self, features: torch.Tensor, ids: torch.Tensor, k: int = 20,
                 temperature: float = 0.05, device="cpu", chunk: int = 65_536,
                 unit: bool = False):
        if features.ndim != 2 or ids.shape != (len(features), NLEV):
            raise ValueError(f"need features [N, d] and ids [N, {NLEV}], got "
                             f"{tuple(features.shape)} and {tuple(ids.shape)}")
        if len(features) == 0:
            raise ValueError("the memory has no samples")
        if k < 1 or not temperature > 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got {k}, {temperature}")
        self.k, self.temperature = int(k), float(temperature)
        self.device = torch.device(device)
        self.ids = ids.to(self.device, torch.long)
        if unit:  # already as the memory keeps them (see from_unit)
            if features.dtype != torch.float16:
                raise ValueError(f"need float16 unit rows, got {features.dtype}")
            self.features = features.to(self.device)
            return
        # unit rows in float16, written a block at a time: the only full-size copy is this one
        self.features = torch.empty(features.shape, dtype=torch.float16, device=self.device)
        for s in range(0, len(features), chunk):
            self.features[s:s + chunk] = self.unit_rows(features[s:s + chunk]).to(self.device)

    @staticmethod
    def unit_rows(block: torch.Tensor) -> torch.Tensor:
        """Rows ``block [n, d]`` as the memory keeps them: unit length, float16."""
        x = torch.nn.functional.normalize(block.float(), dim=1)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the memory's features have NaN or infinite values")
        return x.to(torch.float16)

    @classmethod
    def from_unit(cls, features: torch.Tensor, ids: torch.Tensor, k: int = 20,
                  temperature: float = 0.05, device="cpu") -> Memory:
        """A memory from rows already normalised and in float16 (``self.features`` of
        another memory, as :mod:`hiergeo.export` saves it), kept as they are: no second
        full-size copy."""
        return cls(features, ids, k, temperature, device, unit=True)

    @torch.no_grad()
    def search(self, f: torch.Tensor) -> Neighbours:
        """The ``k`` most similar samples to encoder features ``f [B, d]``."""
        if f.shape[-1] != self.features.shape[1]:
            raise ValueError(f"queries have dimension {f.shape[-1]}, the memory "
                             f"{self.features.shape[1]}")
        q = torch.nn.functional.normalize(f.float(), dim=1).to(self.device)
        sim, idx = chunked_topk_cosine(q, self.features, self.k)
        w = torch.exp((sim.double() - sim[:, :1].double()) / self.temperature)
        return Neighbours(self.ids[idx.to(self.device)], w)


def memory_conditional(nb: Neighbours, query: torch.Tensor, child: torch.Tensor, level: int,
                       hier) -> torch.Tensor:
    """``P_mem(child | its parent)`` for pairs (query ``query[m]``, entity ``child[m]`` of
    ``level``), float64 ``[M]``; NaN where no neighbour of the query lies under the parent.
    Only neighbours with an active entity at ``level`` count, so the values sum to one over
    a parent's active children."""
    lab = nb.ids[query, :, level]                     # [M, k]
    w = nb.weight[query]
    has = (lab >= 0) & hier.active[lab.clamp_min(0)]
    if level > 0:
        has &= nb.ids[query, :, level - 1] == hier.parent[child][:, None]
    den = (w * has).sum(1)
    num = (w * (has & (lab == child[:, None]))).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)


def mix_log_prob(logp_model: torch.Tensor, p_mem: torch.Tensor, a: float) -> torch.Tensor:
    """``log((1 - a) exp(logp_model) + a p_mem)``, and ``logp_model`` where ``p_mem`` is NaN
    or ``a`` is 0."""
    if not 0 <= a <= 1:
        raise ValueError(f"the memory's weight must be in [0, 1], got {a}")
    if a == 0:
        return logp_model
    mixed = torch.logaddexp(logp_model + math.log1p(-a) if a < 1 else
                            torch.full_like(logp_model, -torch.inf),
                            torch.log(p_mem.clamp_min(0)) + math.log(a))
    return torch.where(torch.isnan(p_mem), logp_model, mixed)
