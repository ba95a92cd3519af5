"""The spaces as pytorch-metric-learning distances: :class:`SpaceDistance` wraps a
:mod:`hiergeo.geometry.spaces` space in PML's ``BaseDistance``, so that PML's losses, miners,
k-nearest-neighbour search and ``AccuracyCalculator`` measure in the ball (or the Lorentz,
Euclidean or spherical space) rather than in PML's default Euclidean or cosine."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance


class SpaceDistance(BaseDistance):
    """PML distance of ``space``: ``compute_mat`` is the space's ``matrix`` (all pairs),
    ``pairwise_distance`` its ``pair`` (row by row), computed in float64 and returned in
    the queries' dtype. Points are used as they are (PML's normalisation would move them
    off the space); smaller is closer (not inverted).

    ``similarity=True`` gives ``-d`` instead, marked inverted (larger is closer): for PML
    losses written for similarities, whose margins only mean what their papers say on one
    (``ProxyAnchorLoss``: with a distance its margin makes both terms easier)."""

    def __init__(self, space, similarity: bool = False, **kwargs):
        super().__init__(normalize_embeddings=False, is_inverted=similarity, **kwargs)
        self.space = space
        self._sign = -1.0 if similarity else 1.0

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return (self._sign * self.space.matrix(query_emb, ref_emb)).to(query_emb.dtype)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return (self._sign * self.space.pair(query_emb, ref_emb)).to(query_emb.dtype)
