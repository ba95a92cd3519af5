"""GPS coordinates from EXIF (Pillow only)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

GPS_IFD = 0x8825
LAT_REF, LAT, LON_REF, LON = 1, 2, 3, 4


def _degrees(dms) -> float:
    d, m, s = (float(x) for x in dms)
    return d + m / 60.0 + s / 3600.0


def read_gps(path: str | Path) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from a file's EXIF, signed by the N/S and E/W
    references; None if the file has no readable GPS position, or the position (0, 0) that
    cameras without a fix write."""
    from .images import HEIC_SUFFIXES, heif_available

    if Path(path).suffix.lower() in HEIC_SUFFIXES:
        heif_available()  # registers pillow-heif's opener, when installed
    try:
        with Image.open(path) as img:
            gps = img.getexif().get_ifd(GPS_IFD)
    except Exception:  # unreadable file or EXIF block: no position
        return None
    if not gps or LAT not in gps or LON not in gps:
        return None
    try:
        lat, lon = _degrees(gps[LAT]), _degrees(gps[LON])
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if str(gps.get(LAT_REF, "N")).strip().upper().startswith("S"):
        lat = -lat
    if str(gps.get(LON_REF, "E")).strip().upper().startswith("W"):
        lon = -lon
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        return None
    if lat == 0 and lon == 0:  # what many cameras write when they have no fix
        return None
    return lat, lon
