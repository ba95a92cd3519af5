"""Checking coordinates before they reach a k-d tree."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .geo import wrap_lon


def check_coordinates(
    lat,
    lon,
    *,
    on_invalid: str = "raise",
    source: str | None = None,
    lat_name: str = "latitude",
    lon_name: str = "longitude",
    row_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and normalise coordinates in degrees.

    Returns ``(lat, lon, valid)`` with longitudes wrapped into [-180, 180) where they were
    outside [-180, 180]. Invalid rows are NaN or infinite values and latitudes outside
    [-90, 90]. With ``on_invalid="raise"`` the first one raises :class:`InputError` naming its
    row and field; with ``"mask"`` they are reported in ``valid`` (False) and left to the caller
    to mask and count.
    """
    if on_invalid not in ("raise", "mask"):
        raise ValueError(f"on_invalid must be 'raise' or 'mask', not {on_invalid!r}")
    try:
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"coordinates must be numbers: {exc}") from None
    if lat.shape != lon.shape:
        raise InputError(f"{len(lat)} latitudes but {len(lon)} longitudes")
    bad_lat = ~np.isfinite(lat) | (np.abs(lat) > 90.0)
    bad_lon = ~np.isfinite(lon)
    valid = ~(bad_lat | bad_lon)
    if on_invalid == "raise" and not valid.all():
        row = int(np.flatnonzero(~valid)[0])
        field, value = (lat_name, lat[row]) if bad_lat[row] else (lon_name, lon[row])
        why = "outside [-90, 90]" if np.isfinite(value) else "not finite"
        where = f"{source}: " if source else ""
        raise InputError(
            f"{where}row {row + row_offset} field {field!r} = {float(value)!r} is {why} "
            f"({int((~valid).sum())} invalid row(s) in all; pass on_invalid='mask' to mask them)"
        )
    lon = np.where(valid, wrap_lon(np.where(bad_lon, 0.0, lon)), np.nan)
    lat = np.where(valid, lat, np.nan)
    return lat, lon, valid
