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
from .records import IMAGE_SUFFIXES, _read, osv5m_paths

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".parquet"}


def is_store(p: Path) -> bool:
    return p.is_dir() and (p / "store.json").exists()


def _text(v) -> str:
    """A table cell as text: "" for missing, integral floats without ".0" (an id column
    Parquet stored as floats because of a blank)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _utf8(path: str) -> str | None:
    """Why ``path`` cannot be written to a table (its name is not valid UTF-8), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename it)"
    return None


def _printable(path: str) -> str:
    """A file name as text whatever its bytes: ``caf\\xe9.jpg`` for Latin-1's café."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _read_table(path: Path, image_dir: str | Path | None = None) -> pd.DataFrame:
    """A photo table: ``path`` (relative to the table's folder), optional ``id``,
    ``latitude, longitude``, OSV-5M label columns and ``credit``. A row without a path keeps
    an empty one (it is skipped with its reason); a row without an id takes its path, or
    ``<table>:row <n>`` without a path either. A table with an ``id`` column and no ``path``
    is in OSV-5M's layout: its photos are ``{image_dir}/{id}.jpg`` (default: the table's
    folder), as ``python -m hiergeo.features`` reads them."""
    from gazetteer import InputError

    df = _read(path)
    if "path" in df.columns:
        given = df["path"].map(_text)
        nul = given.str.contains("\x00", regex=False)
        given = given.where(~nul, "")  # no file system takes the name: skipped with its reason
        df["path"] = [q if not q or Path(q).is_absolute() else str(path.parent / q)
                      for q in given]
    elif "id" in df.columns:
        df["id"] = df["id"].map(_text)
        df["path"] = osv5m_paths(df["id"], path, image_dir)
        nul = df["id"].str.contains("\x00", regex=False)
        df.loc[nul | df["id"].eq(""), "path"] = ""
    else:
        raise InputError(f"{path}: no column 'path' (the photos' files) nor 'id' (OSV-5M's "
                         f"layout: {{id}}.jpg in --image-dir); columns are {list(df.columns)}")
    ids = df["id"].map(_text) if "id" in df.columns else pd.Series("", index=df.index)
    df["id"] = [i or q or f"{path}:row {n + 2}" for n, (i, q) in enumerate(
        zip(ids, df["path"], strict=True))]  # row numbers as a spreadsheet shows them
    clash = df["id"].duplicated(keep=False)
    if clash.any():
        rows = (np.flatnonzero(df["id"].eq(df.loc[clash, "id"].iloc[0]).to_numpy()) + 2)[:3]
        raise InputError(f"{path}: {int(clash.sum())} rows share ids (e.g. id "
                         f"{df.loc[clash, 'id'].iloc[0]!r} on rows {rows.tolist()}); give each "
                         "row its own id, or leave the id column out to use the paths")
    df["reason"] = ["path contains a NUL byte" if z else None if q else
                    "no path given for this row" for q, z in zip(df["path"], nul, strict=True)]
    given, shown = pd.Series(False, index=df.index), {}
    for col in ("latitude", "longitude"):
        if col not in df.columns:
            df[col] = np.nan
            shown[col] = pd.Series("", index=df.index)
            continue
        shown[col] = df[col]
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            num = df[col].astype(float)
            given |= num.notna()
        else:  # text (a CSV column with a word in it): parse, remembering what was there
            text = df[col].where(df[col].notna(), "").astype(str).str.strip()  # vectorised
            num = pd.to_numeric(text.replace("", np.nan), errors="coerce")
            given |= text != ""
        df[col] = num
    wrong = given & ~(df["latitude"].abs().le(90) & df["longitude"].abs().le(180))
    if wrong.any():  # a position half given, out of range or not a number: no truth at all
        r = int(np.flatnonzero(wrong.to_numpy())[0])
        log.warning("%s: %d rows whose latitude, longitude is not a position (e.g. row %d: "
                    "%s, %s); their truth is left out (EXIF GPS is used where the photo has "
                    "it)", path, int(wrong.sum()), r + 2, str(shown["latitude"].iloc[r])[:30],
                    str(shown["longitude"].iloc[r])[:30])
        df.loc[wrong, ["latitude", "longitude"]] = np.nan
    df["truth_source"] = np.where(df["latitude"].notna() & df["longitude"].notna(),
                                  "table", "")
    labels = [c for c in [*OSV5M_KEY_COLUMNS.values(), *OSV5M_PART_COLUMNS.values()]
              if c in df.columns]
    extra = ["credit"] if "credit" in df.columns else []
    return df[["id", "path", "reason", "latitude", "longitude", "truth_source", *labels,
               *extra]]


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted, following symlinked folders (each real folder
    once)."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [os.path.join(root, name) for name in files
                  if Path(name).suffix.lower() in IMAGE_SUFFIXES
                  and os.path.isfile(os.path.join(root, name))]
    return sorted(found)


def _file_rows(paths: list[str], folder: str | None = None) -> pd.DataFrame:
    """Rows for files named on their own or found in ``folder``: the id is the path for now
    (:func:`_short_ids` shortens it), ``_rel`` the name below the folder; a name that is not
    valid UTF-8 keeps a printable id and an empty path, and is skipped with its reason."""
    reasons = [_utf8(q) for q in paths]  # columns, not a dict per file (millions of files)
    return pd.DataFrame({
        "id": [_printable(q) for q in paths],
        "path": ["" if why else q for q, why in zip(paths, reasons, strict=True)],
        "reason": reasons,
        "_rel": [_printable(os.path.relpath(q, folder) if folder else os.path.basename(q))
                 for q in paths],
        "_real": [os.fsencode(os.path.realpath(q)) for q in paths]},  # bytes: any name
        columns=["id", "path", "reason", "_rel", "_real"])


def _short_ids(out: pd.DataFrame) -> pd.DataFrame:
    """Ids a person reads for files found in folders or named on their own: the file's stem
    (``IMG_0001``); where two photos share it, the path below its folder without the suffix
    (``2023/IMG_0001``), then with it (``IMG_0001.png``); the whole path where even that is
    shared (the same name under two folders given). Never an id a table row has. A file
    whose name is not UTF-8 keeps its whole printable path: it has no ``path`` to tell it
    by. The ``path`` column keeps every file's full path."""
    rel = out.pop("_rel")
    left = rel.notna() & out["reason"].isna()
    if not left.any():
        return out
    ids = out["id"].copy()
    taken = set(ids[~left])
    levels = (lambda r: os.path.splitext(os.path.basename(r))[0],
              lambda r: os.path.splitext(r)[0].replace(os.sep, "/"),
              lambda r: r.replace(os.sep, "/"))
    for short in levels:
        cand = rel[left].map(short)
        ok = ~cand.duplicated(keep=False) & ~cand.isin(taken) & (cand != "")
        chosen = ok[ok].index
        ids.loc[chosen] = cand[ok].to_numpy()
        taken.update(cand[ok])
        left.loc[chosen] = False
        if not left.any():
            break
    out["id"] = ids
    return out


def collect_photos(items, gps: bool = True, image_dir: str | Path | None = None
                   ) -> pd.DataFrame:
    """One row per photo named by ``items`` (files, folders searched recursively, photo
    tables, PIL images), in their order: ``id, path, image, reason, latitude, longitude,
    truth_source`` (+ label columns of tables). ``path`` is None for an image in memory and
    "" for a row that cannot be read (``reason`` says why: it is skipped), ``image`` None
    for a file; coordinates are the truth (a table's, else with ``gps`` the file's EXIF
    GPS), NaN when unknown. (:meth:`Geolocator.predict` passes ``gps=False`` and reads EXIF
    in its image workers, so that a million photos start at once.) ``image_dir``: where the
    photos of tables in OSV-5M's layout are (:func:`_read_table`).

    A file found in a folder or named on its own is predicted once, and not at all when a
    table names it (the table's row, with its id and truth, is kept); every table row is
    kept. Two rows with one id are an error (ids name the output's rows). A file's id is
    its stem, made longer only where two photos share one (:func:`_short_ids`); a table row's
    is its ``id`` column's, else its path."""
    from gazetteer import InputError

    out = _dedupe(_listed(items, image_dir))
    if "_rel" in out.columns:
        out = _short_ids(out)
    clash = out["id"].duplicated(keep=False)
    if clash.any():
        raise InputError(f"{int(clash.sum())} rows share ids (e.g. id "
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


def _listed(items, image_dir=None) -> pd.DataFrame:
    """The rows of every item in order, each marked as a table's (``_table``) or not, with
    its file's real path as bytes (``_real``) where there is one."""
    from PIL import Image

    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    chunks = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            chunks.append(pd.DataFrame({"id": [f"image-{i}"], "path": [None],
                                        "reason": [None], "image": [item]}))
            continue
        p = Path(item)
        if is_store(p):
            raise ValueError(f"{p} is a feature store: predict stores on their own (or call "
                             "predict_features), not mixed with photos")
        if p.is_dir():
            files = _image_files(p)
            if not files:
                log.warning("%s: no image files (suffixes %s)", p, sorted(IMAGE_SUFFIXES))
            chunks.append(_file_rows(files, os.fsdecode(item)).assign(image=None))
        elif p.suffix.lower() in TABLE_SUFFIXES:
            chunks.append(_read_table(p, image_dir).assign(image=None, _table=True))
        else:
            chunks.append(_file_rows([os.fsdecode(item)]).assign(image=None))
    out = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(
        columns=["id", "path", "reason", "image"])
    for col, default in (("latitude", np.nan), ("longitude", np.nan), ("truth_source", ""),
                         ("_table", False)):
        out[col] = out[col].fillna(default) if col in out.columns else default
    out["_table"] = out["_table"].astype(bool)
    out["_real"] = [r if isinstance(r, bytes) else os.fsencode(os.path.realpath(q))
                    if isinstance(q, str) and q else None for q, r in zip(
                        out["path"], out.get("_real", [None] * len(out)), strict=True)]
    return out


def _dedupe(out: pd.DataFrame) -> pd.DataFrame:
    """Drop the rows of files found in folders or named on their own that a table names, or
    that an earlier such row names; every table row stays."""
    real = out["_real"]
    in_table = set(real[out["_table"].to_numpy()].dropna())
    named = real.notna() & ~out["_table"]
    drop = (named & real.isin(in_table)) | (named & real.duplicated(keep="first"))
    if drop.any():
        log.warning("%d photos named more than once (e.g. %s); each is predicted once",
                    int(drop.sum()), out.loc[drop.to_numpy(), "id"].iloc[0])
        out = out[~drop.to_numpy()].reset_index(drop=True)
    return out.drop(columns=["_table", "_real"])


def wants_gps(records: pd.DataFrame) -> np.ndarray:
    """Rows whose truth may come from EXIF: a file, no position from a table."""
    has_file = records["path"].map(lambda q: isinstance(q, str) and q != "")
    return (has_file & records["latitude"].isna()).to_numpy()


def set_gps(records: pd.DataFrame, i: int, gps) -> None:
    if gps is not None:
        records.loc[i, ["latitude", "longitude", "truth_source"]] = [gps[0], gps[1], "exif"]


class PhotoRows(ImageRows):
    """:class:`~hiergeo.data.images.ImageRows` that also reads the EXIF GPS of the rows
    ``want_gps`` marks, in the worker, and skips the rows ``reasons`` gives a reason (None:
    none): items ``(image, row, reason, (lat, lon) or None)``."""

    def __init__(self, sources, transform, want_gps, reasons=None):
        super().__init__(sources, transform)
        self.want_gps = want_gps
        self.reasons = reasons

    def __getitem__(self, i):
        why = self.reasons[i] if self.reasons is not None else None
        if why is None and (self.paths[i] is None or isinstance(self.paths[i], str)
                            and not self.paths[i]):
            why = "no image and no path for this row"
        if why is not None and not (isinstance(why, float) and np.isnan(why)):
            return None, int(i), str(why), None
        x, row, why = super().__getitem__(i)
        return x, row, why, read_gps(self.paths[row]) if self.want_gps[row] else None


def collate_photos(items):
    """:func:`~hiergeo.data.images.collate_images` plus ``{row: (lat, lon)}`` of the GPS
    positions found."""
    x, rows, bad = collate_images([it[:3] for it in items])
    return x, rows, bad, {it[1]: it[3] for it in items if it[3] is not None}
