"""Spatial train/held-out split by cells, so a model cannot score by remembering a street.

:func:`spatial_split` assigns every sample to a cell of an equal-area grid (:func:`cell_ids`),
holds out whole cells, picked at random, until the held-out share is reached, and then drops the
training samples within ``min_km`` of a held-out sample on the other side of a cell border (the
only ones that can be that close). A dense city keeps its training data: it loses whole cells
to the held-out split and a strip of ``min_km`` along their borders, not every sample near one
of its held-out samples.

:func:`point_split` is the rule this replaced (random held-out samples, then every training
sample within ``min_km`` of one is dropped, as OSV-5M describes): on street-level data, where
neighbours are metres apart, it hollows out every dense area. It is kept for comparison.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from gazetteer.geo import EARTH_RADIUS_KM, to_xyz

#: km per degree of latitude.
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0


def near_mask(lat, lon, ref_lat, ref_lon, min_km: float = 1.0) -> np.ndarray:
    """True for each point within ``min_km`` (great circle) of any reference point."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if len(lat) == 0 or len(ref_lat) == 0 or min_km <= 0:
        return np.zeros(len(lat), dtype=bool)
    tree = cKDTree(to_xyz(np.asarray(ref_lat, float), np.asarray(ref_lon, float)))
    chord = 2 * np.sin(min_km / EARTH_RADIUS_KM / 2)
    d, _ = tree.query(to_xyz(lat, lon), k=1, distance_upper_bound=chord * (1 + 1e-12))
    return np.isfinite(d)


def cell_ids(lat, lon, cell_km: float) -> np.ndarray:
    """The cell of each point in an equal-area grid of cells about ``cell_km`` on a side.

    Latitude bands of equal height (``180 / ceil(180 / (cell_km / 111.2))`` degrees); each band
    cut into an integer number of cells as wide as the band is high at its middle latitude
    (at least one), so cells have about the same area everywhere, the antimeridian is a cell
    border (longitudes -180 and 180 fall in the same cell), and each pole is a cap of a few
    cells rather than thousands of slivers. Returns int64 ids, unique across the globe.
    """
    if not cell_km > 0:
        raise ValueError(f"cell_km must be positive, got {cell_km}")
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    n_bands = max(1, math.ceil(180.0 / (cell_km / KM_PER_DEGREE)))
    h = 180.0 / n_bands
    mid = np.deg2rad(-90.0 + (np.arange(n_bands) + 0.5) * h)
    per_band = np.maximum(1, np.floor(360.0 * np.cos(mid) / h)).astype(np.int64)
    offset = np.concatenate([[0], np.cumsum(per_band)[:-1]])
    band = np.clip(np.floor((lat + 90.0) / h).astype(np.int64), 0, n_bands - 1)
    n = per_band[band]
    col = np.minimum(np.floor(np.mod(lon + 180.0, 360.0) / 360.0 * n).astype(np.int64), n - 1)
    return offset[band] + col


def _checked(lat, lon, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates as float arrays, after checking the split's arguments."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        raise ValueError("coordinates must be finite; drop rows without coordinates first")
    return lat, lon


def spatial_split(lat, lon, test_fraction: float = 0.1, min_km: float = 1.0, seed: int = 0,
                  cell_km: float = 5.0) -> dict:
    """Hold out whole cells of about ``cell_km`` (:func:`cell_ids`) until ``test_fraction``
    of the rows is held out, then drop the training rows within ``min_km`` of a held-out row.

    Cells are taken in a seeded random order; the held-out set is the prefix of that order
    whose row count is closest to ``test_fraction`` (so it misses it by at most half the
    largest cell). Every cell has the same chance to be held out, so the held-out rows follow
    the data's own geography. At least one cell is held out and at least one kept.

    Returns ``{"train", "test", "dropped"}`` row indices (dropped rows are neither trained on
    nor tested; report their count) and ``"cells"``, ``"test_cells"``: how many cells hold
    rows, and how many of them are held out.
    """
    lat, lon = _checked(lat, lon, test_fraction)
    n = len(lat)
    cells, inverse, counts = np.unique(cell_ids(lat, lon, cell_km), return_inverse=True,
                                       return_counts=True)
    if len(cells) < 2:
        raise ValueError(f"all {n} rows lie in one cell of {cell_km:g} km: too few places to "
                         "split by cells; use a smaller cell or give a separate val set")
    order = np.random.default_rng(seed).permutation(len(cells))
    cum = np.cumsum(counts[order])
    take = int(np.argmin(np.abs(cum - test_fraction * n))) + 1
    take = min(max(take, 1), len(cells) - 1)
    held = np.zeros(len(cells), dtype=bool)
    held[order[:take]] = True
    is_test = held[inverse]
    rest = np.flatnonzero(~is_test)
    near = near_mask(lat[rest], lon[rest], lat[is_test], lon[is_test], min_km)
    return {"train": rest[~near], "test": np.flatnonzero(is_test), "dropped": rest[near],
            "cells": len(cells), "test_cells": take}


def point_split(lat, lon, test_fraction: float = 0.1, min_km: float = 1.0,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The former rule, kept for comparison: random test rows, then drop every other row
    within ``min_km`` of a test row. Returns ``{"train", "test", "dropped"}`` row indices."""
    lat, lon = _checked(lat, lon, test_fraction)
    n = len(lat)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=max(1, int(round(test_fraction * n))), replace=False)] = True
    rest = np.flatnonzero(~is_test)
    near = near_mask(lat[rest], lon[rest], lat[is_test], lon[is_test], min_km)
    return {"train": rest[~near], "test": np.flatnonzero(is_test), "dropped": rest[near]}
