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


def lon_window(lon) -> float:
    """Where the 360-degree window starts in which the longitudes ``lon`` (degrees) are most
    compact: ``-180.0`` (the usual [-180, 180]) or ``0.0`` ([0, 360)) when that spans fewer
    degrees. A country across the antimeridian (New Zealand with the Chatham Islands, Fiji,
    Russia, Kiribati) spans almost 360 degrees in the first and a few in the second; a tie
    keeps the usual window. NaNs are ignored; no longitude at all gives ``-180.0``."""
    lon = wrap_lon(np.asarray(lon, dtype=np.float64).ravel())
    lon = lon[np.isfinite(lon)]
    if lon.size == 0:
        return -180.0
    return 0.0 if np.ptp(lon % 360.0) < np.ptp(lon) else -180.0


def unwrap_lon(lon, start: float | None = None) -> np.ndarray:
    """Longitudes (degrees) moved into one continuous window, so that a place across the
    antimeridian is drawn in one piece instead of stretched over -180..180.

    Args:
        lon: longitudes, any shape.
        start: the window, ``-180.0`` or ``0.0`` (see :func:`lon_window`); None: the most
            compact for ``lon`` itself. Pass the same ``start`` to every layer of one map
            (cities, labels, polygon vertices) so they stay aligned.
    Returns:
        A float64 array shaped like ``lon``: in the ``-180`` window, :func:`wrap_lon` (values
        already in [-180, 180] unchanged); in the ``0`` window, ``lon % 360`` (-176 -> 184).
    """
    lon = np.asarray(lon, dtype=np.float64)
    if start is None:
        start = lon_window(lon)
    if start == -180.0:
        return wrap_lon(lon)
    if start == 0.0:
        return lon % 360.0
    raise ValueError(f"start must be -180.0 or 0.0, not {start!r}")


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


def haversine_km(lat1, lon1, lat2, lon2, xp=np):
    """Great-circle distance in km between points given in degrees (broadcasting), in
    OSV-5M's form: ``2 R atan2(sqrt(a), sqrt(1 - a))`` with ``R = 6371``, on radians. The
    one haversine of the project: the metrics, the loss (``xp=torch``, float64 tensors) and
    the gazetteer all call it.

    ``xp``: ``numpy`` (inputs converted to float64 arrays) or ``torch`` (tensors, kept on
    their device, computed in float64)."""
    if xp is np:
        lat1, lon1, lat2, lon2 = (np.asarray(v, np.float64) for v in (lat1, lon1, lat2, lon2))
    else:
        lat1, lon1, lat2, lon2 = (v.double() for v in (lat1, lon1, lat2, lon2))
    # OSV-5M's order of operations: radians first, then the differences
    p1, p2 = xp.deg2rad(lat1), xp.deg2rad(lat2)
    dlon = xp.deg2rad(lon1) - xp.deg2rad(lon2)
    a = xp.sin((p1 - p2) / 2) ** 2 + xp.cos(p1) * xp.cos(p2) * xp.sin(dlon / 2) ** 2
    a = a.clip(0.0, 1.0)
    return EARTH_RADIUS_KM * 2 * xp.arctan2(xp.sqrt(a), xp.sqrt(1 - a))


def chord_to_km(chord, xp=np):
    """Great-circle km from the chord length between two unit vectors (``xp`` as in
    :func:`haversine_km`): how a matrix of distances is computed from one product of unit
    vectors, ``chord² = 2 - 2 p.q``."""
    if xp is np:
        chord = np.asarray(chord, np.float64)
    return 2 * EARTH_RADIUS_KM * xp.arcsin((chord / 2).clip(0.0, 1.0))
