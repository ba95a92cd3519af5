"""One fixed guess for every query: the floor any model must clear."""

from __future__ import annotations

import numpy as np

from ..metrics import geoscore, haversine_km
from .common import as_prediction


class ConstantGuess:
    """The training location (among ``n_candidates`` drawn ones) with the best mean GeoScore
    over ``n_eval`` drawn training samples; its labels are that sample's."""

    def __init__(self, n_candidates: int = 2000, n_eval: int = 5000, seed: int = 0):
        self.n_candidates, self.n_eval, self.seed = n_candidates, n_eval, seed

    def fit(self, train) -> ConstantGuess:
        ll, ids = train.latlon.numpy(), train.ids.numpy()
        rng = np.random.default_rng(self.seed)
        cand = rng.choice(len(ll), min(self.n_candidates, len(ll)), replace=False)
        ev = rng.choice(len(ll), min(self.n_eval, len(ll)), replace=False)
        score = np.array([geoscore(haversine_km(ll[c, 0], ll[c, 1], ll[ev, 0],
                                                ll[ev, 1])).mean() for c in cand])
        best = cand[int(score.argmax())]
        self.lat, self.lon, self.path = float(ll[best, 0]), float(ll[best, 1]), ids[best]
        return self

    def predict(self, x):
        n = len(x)
        return as_prediction(np.tile(self.path, (n, 1)), np.full(n, self.lat),
                             np.full(n, self.lon))
