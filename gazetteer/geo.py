"""Spherical helpers in NumPy (no torch): unit vectors, great-circle distance, wrapping."""

from __future__ import annotations

import numpy as np

#: Mean Earth radius in km, the value OSV-5M's metrics use.
EARTH_RADIUS_KM = 6371.0


def wrap_lon(lon: np.ndarray) -> np.ndarray:
    """Wrap longitudes into [-180, 180); values already inside are returned unchanged."""
    lon = np.asarray(lon, dtype=np.float64)
    out = lon.copy()
    outside = (lon < -180.0) | (lon > 180.0)
    out[outside] = (lon[outside] + 180.0) % 360.0 - 180.0
    return out


def to_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors ``[n, 3]`` for latitudes/longitudes in degrees."""
    la = np.radians(np.asarray(lat, dtype=np.float64))
    lo = np.radians(np.asarray(lon, dtype=np.float64))
    cl = np.cos(la)
    return np.stack([cl * np.cos(lo), cl * np.sin(lo), np.sin(la)], axis=-1)


def from_xyz(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude in degrees of (not necessarily unit) vectors ``[n, 3]``."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat = p2 - p1
    dlon = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def chord_to_km(chord: np.ndarray) -> np.ndarray:
    """Great-circle km from the chord length between two unit vectors."""
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))
