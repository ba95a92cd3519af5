"""Nearest-neighbour retrieval over training features (OSV-5M's retrieval baseline)."""

from __future__ import annotations

import numpy as np
import torch

from ..predict.memory import vote_weights
from ..predict.memory_index import build_index
from .common import as_prediction


class KNNRetrieval:
    """Cosine nearest neighbours among the training samples.

    ``k=1`` answers with the nearest sample's location and labels. ``k>1`` votes down the
    tree: the country with the largest summed weight ``exp(sim / temperature)`` among the
    ``k`` neighbours, then the region among the neighbours in that country, and so on; the
    location is that of the most similar neighbour left after the deepest vote.

    The search is the retrieval memory's (:mod:`hiergeo.predict.memory_index`: ``index``
    ``exact``, ``ivfpq`` or ``auto``), over one normalised copy of the training features, and
    the neighbours' weights are the memory's (:func:`hiergeo.predict.memory.vote_weights`).
    An index already built (a run's :class:`~hiergeo.predict.memory.Memory`'s ``index``) can
    be shared: ``fit(train, index=memory.index)``.
    """

    def __init__(self, k: int = 1, temperature: float = 0.05):
        if k < 1 or not temperature > 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got {k}, {temperature}")
        self.k, self.temperature = int(k), float(temperature)

    def fit(self, train, index="auto") -> KNNRetrieval:
        """``index``: a kind to build over ``train.x``, or an index already built over it.
        The default, ``auto``, is exact search up to 1 GiB of float16 rows (524k x 1024) and
        IVF-PQ above, as the memory's (:func:`hiergeo.predict.memory_index.resolve_kind`):
        at OSV-5M's size the baseline is then approximate (recall@20 0.96 at half the lists
        on the names benchmark); pass ``index="exact"`` for the exact baseline."""
        self.index = build_index(train.x, index) if isinstance(index, str) else index
        if self.index.ntotal != len(train.ids):
            raise ValueError(f"the index holds {self.index.ntotal} rows, the training split "
                             f"{len(train.ids)}")
        self.latlon = train.latlon.numpy()
        self.ids = train.ids.numpy()
        return self

    def neighbours(self, x: torch.Tensor, k: int | None = None):
        """``(similarity, training row) [n, k]``, most similar first."""
        x = x.float() if hasattr(x, "float") else torch.as_tensor(x).float()
        sim, idx = self.index.search(torch.nn.functional.normalize(x, dim=1),
                                     k or self.k)
        return sim.cpu().numpy(), idx.cpu().numpy()

    def predict(self, x: torch.Tensor, neighbours=None):
        """Answer for features ``x``; ``neighbours`` from :meth:`neighbours` (with at least
        ``k`` columns) saves the search when trying several settings."""
        sim, idx = neighbours if neighbours is not None else self.neighbours(x)
        sim, idx = sim[:, :self.k], idx[:, :self.k]
        if self.k == 1:
            best = idx[:, 0]
            return as_prediction(self.ids[best], self.latlon[best, 0], self.latlon[best, 1])
        parts = [self._vote(sim[s:s + 4096], idx[s:s + 4096]) for s in range(0, len(idx), 4096)]
        paths, best = (np.concatenate(a) for a in zip(*parts, strict=True))
        return as_prediction(paths, self.latlon[best, 0], self.latlon[best, 1])

    def _vote(self, sim, idx):
        """The voted path and the training row whose location answers, for a chunk."""
        w = vote_weights(sim, self.temperature)
        alive = np.ones(idx.shape, bool)
        paths = np.full((len(idx), self.ids.shape[1]), -1, np.int64)
        for j in range(self.ids.shape[1]):
            lab = self.ids[idx, j]  # [n, k]
            ok = alive & (lab >= 0)
            same = lab[:, :, None] == lab[:, None, :]
            votes = (same * (w * ok)[:, None, :]).sum(2)  # each neighbour's label's weight
            votes[~ok] = -1
            pick = votes.argmax(1)
            has = ok.any(1)
            chosen = lab[np.arange(len(lab)), pick]
            paths[has, j] = chosen[has]
            alive &= ~has[:, None] | (lab == chosen[:, None])
        return paths, idx[np.arange(len(idx)), alive.argmax(1)]  # most similar survivor
