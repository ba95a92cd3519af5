"""Photos to predict: files, folders, photo tables and images in memory as one table of
rows (:func:`collect_photos`), and a dataset that decodes them and reads their EXIF GPS in
DataLoader workers (:class:`PhotoRows`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer.keys import OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS

from .exif import read_gps
from .images import ImageRows, collate_images
from .records import IMAGE_SUFFIXES, _read

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".parquet"}


def is_store(p: Path) -> bool:
    return p.is_dir() and (p / "store.json").exists()


def _read_table(path: Path) -> pd.DataFrame:
    """A photo table: ``path`` (relative to the table's folder), optional ``id``,
    ``latitude, longitude``, OSV-5M label columns and ``credit``. A row without a path keeps
    an empty one (it is skipped with its reason); a row without an id takes its path."""
    from gazetteer import InputError

    df = _read(path)
    if "path" not in df.columns:
        raise InputError(f"{path}: no column 'path' (the photos' files); columns are "
                         f"{list(df.columns)}")
    given = df["path"].map(lambda q: "" if pd.isna(q) else str(q).strip())
    df["path"] = [q if not q or Path(q).is_absolute() else str(path.parent / q) for q in given]
    ids = (df["id"].map(lambda v: "" if pd.isna(v) else str(v).strip()) if "id" in df.columns
           else pd.Series("", index=df.index))
    df["id"] = np.where(ids != "", ids, df["path"])
    for col in ("latitude", "longitude"):
        df[col] = (pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
                   if col in df.columns else np.nan)
    df["truth_source"] = np.where(df["latitude"].notna() & df["longitude"].notna(),
                                  "table", "")
    labels = [c for c in [*OSV5M_KEY_COLUMNS.values(), *OSV5M_PART_COLUMNS.values()]
              if c in df.columns]
    extra = ["credit"] if "credit" in df.columns else []
    return df[["id", "path", "latitude", "longitude", "truth_source", *labels, *extra]]


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted, following symlinked folders (each real folder
    once). Names that are not valid UTF-8 cannot be written to a table: they are counted and
    left out with a warning."""
    found, seen, odd = [], set(), []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = os.path.join(root, name)
            try:
                full.encode("utf-8")
            except UnicodeEncodeError:
                odd.append(full.encode("utf-8", "backslashreplace").decode())
                continue
            if os.path.isfile(full):
                found.append(full)
    if odd:
        log.warning("%s: %d image files whose names are not valid UTF-8 were left out (e.g. "
                    "%s); rename them to predict them", folder, len(odd), odd[0])
    return sorted(found)


def collect_photos(items, gps: bool = True) -> pd.DataFrame:
    """One row per photo named by ``items`` (files, folders searched recursively, photo
    tables, PIL images): ``id, path, image, latitude, longitude, truth_source`` (+ label
    columns of tables). ``path`` is None for an image in memory, ``image`` None for a file;
    coordinates are the truth (a table's, else with ``gps`` the file's EXIF GPS), NaN when
    unknown. (:meth:`Geolocator.predict` passes ``gps=False`` and reads EXIF in its image
    workers, so that a million photos start at once.)

    The same file named twice (a photo and its folder) is kept once; two different photos
    with one id are an error (ids name the output's rows)."""
    from PIL import Image

    from gazetteer import InputError

    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    rows, tables = [], []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            rows.append({"id": f"image-{i}", "path": None, "image": item})
            continue
        p = Path(item)
        if is_store(p):
            raise ValueError(f"{p} is a feature store: predict stores on their own (or call "
                             "predict_features), not mixed with photos")
        if p.is_dir():
            files = _image_files(p)
            if not files:
                log.warning("%s: no image files (suffixes %s)", p, sorted(IMAGE_SUFFIXES))
            rows += [{"id": f, "path": f, "image": None} for f in files]
        elif p.suffix.lower() in TABLE_SUFFIXES:
            tables.append(_read_table(p).assign(image=None))
        else:
            rows.append({"id": str(p), "path": str(p), "image": None})
    files = pd.DataFrame(rows, columns=["id", "path", "image"]).assign(
        latitude=np.nan, longitude=np.nan, truth_source="")
    out = pd.concat([files, *tables], ignore_index=True) if tables else files
    real = [os.path.realpath(q) if isinstance(q, str) and q else f"\0row {i}"
            for i, q in enumerate(out["path"])]
    dup = pd.Series(real).duplicated(keep="first").to_numpy()
    if dup.any():  # the same file named twice (a file and its folder): keep the first
        log.warning("%d photos named more than once (e.g. %s); each is predicted once",
                    int(dup.sum()), out.loc[dup, "path"].iloc[0])
        out = out[~dup].reset_index(drop=True)
    clash = out["id"].duplicated(keep=False)
    if clash.any():
        raise InputError(f"{int(clash.sum())} different photos share ids (e.g. id "
                         f"{out.loc[clash, 'id'].iloc[0]!r}: "
                         f"{out.loc[clash, 'path'].head(2).tolist()}); give each table row "
                         "its own id, or leave the id column out to use the paths")
    bad = out["latitude"].notna() & ~(out["latitude"].abs().le(90)
                                      & out["longitude"].abs().le(180))
    out.loc[bad, ["latitude", "longitude"]] = np.nan
    out.loc[bad, "truth_source"] = ""
    if gps:
        for i in np.flatnonzero(wants_gps(out)):
            set_gps(out, i, read_gps(out.at[i, "path"]))
    return out


def wants_gps(records: pd.DataFrame) -> np.ndarray:
    """Rows whose truth may come from EXIF: a file, no position from a table."""
    has_file = records["path"].map(lambda q: isinstance(q, str) and q != "")
    return (has_file & records["latitude"].isna()).to_numpy()


def set_gps(records: pd.DataFrame, i: int, gps) -> None:
    if gps is not None:
        records.loc[i, ["latitude", "longitude", "truth_source"]] = [gps[0], gps[1], "exif"]


class PhotoRows(ImageRows):
    """:class:`~hiergeo.data.images.ImageRows` that also reads the EXIF GPS of the rows
    ``want_gps`` marks, in the worker: items ``(image, row, reason, (lat, lon) or None)``."""

    def __init__(self, sources, transform, want_gps):
        super().__init__(sources, transform)
        self.want_gps = want_gps

    def __getitem__(self, i):
        if self.paths[i] is None or (isinstance(self.paths[i], str) and not self.paths[i]):
            return None, int(i), "no path given for this row", None
        x, row, why = super().__getitem__(i)
        return x, row, why, read_gps(self.paths[row]) if self.want_gps[row] else None


def collate_photos(items):
    """:func:`~hiergeo.data.images.collate_images` plus ``{row: (lat, lon)}`` of the GPS
    positions found."""
    x, rows, bad = collate_images([it[:3] for it in items])
    return x, rows, bad, {it[1]: it[3] for it in items if it[3] is not None}
