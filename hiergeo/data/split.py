"""Spatial train/test split in the manner of OSV-5M: no training sample within ``min_km``
(1 km by default) of any test sample, so a model cannot score by remembering a street."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from gazetteer.geo import EARTH_RADIUS_KM, to_xyz


def near_mask(lat, lon, ref_lat, ref_lon, min_km: float = 1.0) -> np.ndarray:
    """True for each point within ``min_km`` (great circle) of any reference point."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if len(lat) == 0 or len(ref_lat) == 0:
        return np.zeros(len(lat), dtype=bool)
    tree = cKDTree(to_xyz(np.asarray(ref_lat, float), np.asarray(ref_lon, float)))
    chord = 2 * np.sin(min_km / EARTH_RADIUS_KM / 2)
    d, _ = tree.query(to_xyz(lat, lon), k=1, distance_upper_bound=chord * (1 + 1e-12))
    return np.isfinite(d)


def spatial_split(lat, lon, test_fraction: float = 0.1, min_km: float = 1.0,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Random test rows, then drop every other row within ``min_km`` of a test row.

    Returns ``{"train", "test", "dropped"}`` row indices; dropped rows are neither trained on
    nor tested (report their count).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        raise ValueError("coordinates must be finite; drop rows without coordinates first")
    n = len(lat)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=max(1, int(round(test_fraction * n))), replace=False)] = True
    rest = np.flatnonzero(~is_test)
    near = near_mask(lat[rest], lon[rest], lat[is_test], lon[is_test], min_km)
    return {"train": rest[~near], "test": np.flatnonzero(is_test), "dropped": rest[near]}
