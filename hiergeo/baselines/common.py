"""What the baselines share: their answer as a :class:`~hiergeo.predict.Prediction`, and the
one location that stands for each entity a baseline can name."""

from __future__ import annotations

import numpy as np

from gazetteer.geo import to_xyz

from ..predict import Prediction


def as_prediction(paths: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                  level_prob: np.ndarray | None = None) -> Prediction:
    """One path per query: ``paths [n, 4]`` entity ids (-1 where not predicted),
    coordinates in degrees, optional ``level_prob [n, 4]``."""
    n = len(paths)
    prob = np.full((n, 4), np.nan) if level_prob is None else np.asarray(level_prob, float)
    return Prediction(paths=np.asarray(paths, np.int64)[:, None, :],
                      score=np.zeros((n, 1)), level_prob=prob[:, None, :],
                      lat=np.asarray(lat, np.float64), lon=np.asarray(lon, np.float64),
                      confident_level=np.full(n, -1), comparisons=np.zeros(n, np.int64))


def medoid_points(ids: np.ndarray, latlon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each id, the location of its training sample nearest to the mean direction of
    all its samples: a point that lies where the class's data lies (a centroid of scattered
    places may fall in the sea or in another region). Returns ``(ids [k] sorted,
    latlon [k, 2])``."""
    ids = np.asarray(ids)
    keep = ids >= 0
    ids, latlon = ids[keep], np.asarray(latlon, np.float64)[keep]
    xyz = to_xyz(latlon[:, 0], latlon[:, 1])
    uniq, inv = np.unique(ids, return_inverse=True)
    mean = np.zeros((len(uniq), 3))
    np.add.at(mean, inv, xyz)
    score = (xyz * mean[inv]).sum(1)  # cosine to the class mean, up to the mean's norm
    order = np.lexsort((-score, inv))  # by class, best first
    first = order[np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]]
    return uniq, latlon[first]
