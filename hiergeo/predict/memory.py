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
benchmark: results/benchmarks/README.md#defaults-and-why. The search is an index
(:mod:`hiergeo.predict.memory_index`): exact (float16 rows, ``N x d x 2`` bytes, ``N x d``
multiply-adds per query) for small memories, FAISS's IVF-PQ (``m + 8`` bytes a row) above
``eval.memory_exact_max_gb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gazetteer.keys import LEVELS

from .memory_index import ExactIndex, build_index, chunked_topk_cosine, unit_rows

__all__ = ["Memory", "Neighbours", "chunked_topk_cosine", "memory_conditional",
           "mix_log_prob", "vote_weights"]

NLEV = len(LEVELS)


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
    """Training samples' encoder features ``[N, d]``, searched by an index
    (:mod:`hiergeo.predict.memory_index`), and their entity ids ``[N, 4]``.

    Args:
        features: one row per training sample, in the encoder's feature space (what
            ``GeoModel.encoder`` returns): a tensor or a feature store's lazy view, read a
            block at a time.
        ids: their entity ids per level (-1: none).
        k: neighbours per query.
        temperature: of the neighbour weights (cosine similarity units).
        device: where an exact index keeps and searches its rows.
        index: ``auto`` (exact while the float16 rows fit ``exact_max_gb``, IVF-PQ above),
            ``exact`` or ``ivfpq`` (:func:`~hiergeo.predict.memory_index.build_index`).
        exact_max_gb, nprobe, refine: see :func:`~hiergeo.predict.memory_index.build_index`
            and :class:`~hiergeo.predict.memory_index.FaissIndex`.
    """

    def __init__(self, features, ids: torch.Tensor, k: int = 20, temperature: float = 0.05,
                 device="cpu", *, index: str = "auto", exact_max_gb: float = 1.0,
                 nprobe: int | None = None, refine: int = 4, built=None):
        if built is None and (len(features.shape) != 2 or ids.shape != (len(features), NLEV)):
            raise ValueError(f"need features [N, d] and ids [N, {NLEV}], got "
                             f"{tuple(features.shape)} and {tuple(ids.shape)}")
        if len(ids) == 0:
            raise ValueError("the memory has no samples")
        if k < 1 or not temperature > 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got {k}, {temperature}")
        self.k, self.temperature = int(k), float(temperature)
        self.device = torch.device(device)
        self.ids = ids.to(self.device, torch.long)
        #: seconds the index took to build (set by :func:`hiergeo.evaluate.build_memory`)
        self.build_seconds: float | None = None
        self.index = built if built is not None else build_index(
            features, index, self.device, exact_max_gb=exact_max_gb, nprobe=nprobe,
            refine=refine)
        if self.index.ntotal != len(self.ids):
            raise ValueError(f"the memory's index holds {self.index.ntotal} rows and its ids "
                             f"{len(self.ids)}")

    @classmethod
    def from_index(cls, index, ids: torch.Tensor, k: int = 20, temperature: float = 0.05,
                   device="cpu") -> Memory:
        """A memory around an index already built (as :mod:`hiergeo.export` reads it back)."""
        return cls(None, ids, k, temperature, device, built=index)

    @classmethod
    def from_unit(cls, features: torch.Tensor, ids: torch.Tensor, k: int = 20,
                  temperature: float = 0.05, device="cpu") -> Memory:
        """A memory from rows already normalised and in float16 (an exact index's rows, as
        :mod:`hiergeo.export` saves them), kept as they are: no second full-size copy."""
        return cls.from_index(ExactIndex(features.to(device)), ids, k, temperature, device)

    @staticmethod
    def unit_rows(block: torch.Tensor) -> torch.Tensor:
        """Rows ``block [n, d]`` as an exact memory keeps them: unit length, float16."""
        return unit_rows(block).to(torch.float16)

    @property
    def features(self) -> torch.Tensor:
        """The exact index's float16 unit rows (an IVF-PQ index keeps only codes)."""
        if not isinstance(self.index, ExactIndex):
            raise AttributeError(f"a {self.index.kind} memory keeps codes, not its rows")
        return self.index.rows

    @torch.no_grad()
    def search(self, f: torch.Tensor) -> Neighbours:
        """The ``k`` most similar samples to encoder features ``f [B, d]``."""
        if f.shape[-1] != self.index.dim:
            raise ValueError(f"queries have dimension {f.shape[-1]}, the memory "
                             f"{self.index.dim}")
        q = torch.nn.functional.normalize(f.float(), dim=1).to(self.device)
        sim, idx = self.index.search(q, self.k)
        sim, idx = sim.to(self.device), idx.to(self.device)
        return Neighbours(self.ids[idx], vote_weights(sim, self.temperature))


def vote_weights(sim, temperature: float):
    """Each neighbour's vote ``exp((s_n - s_1) / temperature)`` (``s_1`` the best
    similarity of its row; neighbours an approximate search could not fill, at -inf, weigh
    0), float64: the memory's and :class:`~hiergeo.baselines.KNNRetrieval`'s one formula.
    Takes and returns a tensor or an array."""
    if isinstance(sim, torch.Tensor):
        return torch.exp((sim.double() - sim[:, :1].double()) / temperature)
    return np.exp((sim.astype(np.float64) - sim[:, :1]) / temperature)


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
