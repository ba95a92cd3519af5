"""Dataset tables: one row an image, ``id, path, latitude, longitude`` (+ OSV-5M label columns).

Three layouts:

- OSV-5M: a CSV with ``id, latitude, longitude, country, region, sub-region, city`` (optional
  ``unique_*``) and an image folder holding ``{id}.jpg``, or the zips OSV-5M publishes
  (``images/train/00.zip``...: :mod:`hiergeo.data.zips`).
- A generic table (CSV or Parquet) with ``path, latitude, longitude`` (and optionally ``id``);
  relative paths are taken from the table's folder.
- A folder of photos whose EXIF holds GPS.

Coordinates that are missing or invalid stay NaN here; the feature extractor skips those rows
and lists them with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer import InputError

from ..files import one_line
from .exif import read_gps
from .zips import NOT_IN_ZIPS, ZIP_COLUMNS, attach, check_found, index_zips, zip_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic",
                  ".heif"}
LABEL_COLUMNS = ["country", "region", "sub-region", "city", "unique_country", "unique_region",
                 "unique_sub-region", "unique_city"]


def _read(path: Path, usecols=None, nrows: int | None = None) -> pd.DataFrame:
    """A CSV or Parquet table, or :class:`InputError` naming the file and what is wrong.
    ``usecols``: a callable saying which columns to keep (all: None); ``nrows``: at most
    that many rows (0: the columns alone)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            cols = [c for c in names if usecols is None or usecols(c)]
            if nrows == 0:
                return pd.DataFrame(columns=cols)
            df = pd.read_parquet(path, columns=None if usecols is None else cols)  # kept ones only
            return df if nrows is None else df.iloc[:nrows]
        # strings stay strings: Namibia's country code is "NA", and OSV-5M's ids are
        # 16-digit integers that a float column would round
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                           usecols=usecols, nrows=nrows)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as "
                         "UTF-8") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty (not even a header row)") from None
    except (ValueError, OSError, ImportError, RuntimeError) as exc:  # parser, pyarrow (its
        # ArrowInvalid is a ValueError, ArrowIOError an OSError), a folder...
        raise InputError(f"{path}: cannot read this table ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None


def _coords(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    for col in ("latitude", "longitude"):
        if col not in df.columns:
            raise InputError(f"{path}: no column {col!r}; columns are {list(df.columns)}")
        df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce").astype(float)
    bad = ~np.isfinite(df["latitude"]) | ~np.isfinite(df["longitude"])
    bad |= (df["latitude"].abs() > 90) | (df["longitude"].abs() > 180)
    df.loc[bad, ["latitude", "longitude"]] = np.nan
    return df


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        raise InputError(f"ids must be unique; repeated: {df.loc[dup, 'id'].unique()[:5].tolist()}")
    keep = ["id", "path", "latitude", "longitude"] + [c for c in LABEL_COLUMNS if c in df.columns]
    return df[keep].reset_index(drop=True)


def osv5m_paths(ids, csv: Path, image_dir: str | Path | None = None) -> list[str]:
    """Where OSV-5M keeps the photos of ``ids``: ``{image_dir}/{id}.jpg``, ``image_dir``
    defaulting to the folder of the table ``csv``."""
    folder = Path(image_dir) if image_dir is not None else Path(csv).parent
    return [str(folder / f"{i}.jpg") for i in ids]


def read_osv5m(csv: str | Path, image_dir: str | Path | None = None,
               progress: bool = False, allow_missing: bool = False) -> pd.DataFrame:
    """OSV-5M layout; ``image_dir`` defaults to the CSV's folder. Only the columns used here
    are read (``id``, coordinates, :data:`LABEL_COLUMNS`): the published ``train.csv`` has
    some 35 columns, 2.9 GB, and every cell is read as a string.

    When ``image_dir`` holds ``*.zip`` files (the layout OSV-5M publishes) the photos are read
    from them (:mod:`hiergeo.data.zips`): each row gets the member whose file name is
    ``{id}.jpg`` in any zip, its ``path`` is ``ZIP::MEMBER``, and the table carries the member's
    position in :data:`hiergeo.data.zips.ZIP_COLUMNS`. An id in no zip is read from
    ``{image_dir}/{id}.jpg`` if that file exists, else skipped at extraction with its reason.

    Raises :class:`InputError` before any photo is read when the folder cannot be the
    table's: it is no folder, it holds neither zips nor ``*.jpg`` files, its zips hold none
    of the ids, or (unless ``allow_missing``) they miss more than
    :data:`hiergeo.data.zips.MAX_MISSING_SHARE` of them (:func:`hiergeo.data.zips.check_found`).
    The table's ``attrs["image_source"]`` says where the photos come from (the folder, and
    each zip's name and size), which a feature store records to refuse a rerun from other
    photos."""
    csv = Path(csv)
    wanted = {"id", "latitude", "longitude", *LABEL_COLUMNS}
    df = _read(csv, usecols=lambda c: c in wanted)
    if "id" not in df.columns:
        raise InputError(f"{csv}: no column 'id' (OSV-5M layout needs id, latitude, longitude)")
    df["id"] = df["id"].astype(str)
    folder = Path(image_dir) if image_dir is not None else csv.parent
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (the OSV-5M images: {{id}}.jpg files or "
                         "the published zips)")
    zips = zip_files(folder)
    source = {"image_dir": str(folder.resolve())}
    if zips:
        index = index_zips(folder, progress=progress)
        df = attach(df, index, folder)
        check_found(df, index, folder, csv, allow_missing)
        out = _finish(_coords(df, csv))
        out = pd.concat([out, df[ZIP_COLUMNS].reset_index(drop=True)], axis=1)
        source["zips"] = {p.name: p.stat().st_size for p in zips}
        source["not_in_zips"] = int((df["zip_offset"].to_numpy() == NOT_IN_ZIPS).sum())
    else:
        if len(df) and not _has_jpg(folder):
            raise InputError(f"{folder}: neither *.zip nor *.jpg files in it (the OSV-5M "
                             "images: {id}.jpg files or the published zips)")
        df["path"] = osv5m_paths(df["id"], csv, image_dir)
        out = _finish(_coords(df, csv))
    out.attrs["image_source"] = source
    return out


def _has_jpg(folder: Path) -> bool:
    """Whether ``folder`` has a ``*.jpg`` entry (stops at the first)."""
    with os.scandir(folder) as it:
        return any(e.name.endswith(".jpg") for e in it)


def read_table(table: str | Path) -> pd.DataFrame:
    """Generic table with ``path, latitude, longitude`` (``id`` defaults to the path)."""
    table = Path(table)
    df = _read(table)
    if "path" not in df.columns:
        raise InputError(f"{table}: no column 'path'; columns are {list(df.columns)}")
    if "id" not in df.columns:  # the path as the table is spelled, as ids have always been
        df["id"] = [str(p if Path(p).is_absolute() else table.parent / p) for p in df["path"]]
    # paths from the table's resolved folder: the same photos read the same whichever way the
    # table is named (a rerun's check compares them: hiergeo.features.image_source)
    base = table.resolve().parent
    df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"]]
    df["id"] = df["id"].astype(str)
    return _finish(_coords(df, table))


def read_exif_folder(folder: str | Path) -> pd.DataFrame:
    """Every image file under ``folder`` (sorted), with coordinates from its EXIF GPS."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    folder = folder.resolve()  # paths the same whichever way the folder is named
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    rows = []
    for p in files:
        gps = read_gps(p)
        rows.append({"id": str(p.relative_to(folder)), "path": str(p),
                     "latitude": gps[0] if gps else np.nan,
                     "longitude": gps[1] if gps else np.nan})
    df = pd.DataFrame(rows, columns=["id", "path", "latitude", "longitude"])
    return _finish(df)


def read_records(data: str | Path, image_dir: str | Path | None = None,
                 layout: str = "auto", progress: bool = False,
                 allow_missing: bool = False) -> pd.DataFrame:
    """Pick the layout: a folder is read for EXIF; a table with ``path`` is generic; a table
    with ``id`` and no ``path`` is OSV-5M's. ``progress``: a bar while OSV-5M's zips are
    indexed (98 of them: minutes); ``allow_missing``: see :func:`read_osv5m`."""
    data = Path(data)
    if layout == "auto":
        if data.is_dir():
            layout = "exif"
        else:  # the header alone: OSV-5M's train.csv is 2.9 GB
            cols = _read(data, nrows=0).columns
            layout = "table" if "path" in cols else "osv5m"
    if layout == "exif":
        return read_exif_folder(data)
    if layout == "table":
        return read_table(data)
    if layout == "osv5m":
        return read_osv5m(data, image_dir, progress=progress, allow_missing=allow_missing)
    raise ValueError(f"layout must be auto, osv5m, table or exif, not {layout!r}")
