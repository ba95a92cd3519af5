"""Photos read straight from zip files, as OSV-5M publishes them (no unzipping 5M files).

The published layout (Hugging Face dataset ``osv5m/osv5m``; its card and the loading script
``osv5m.py`` in that dataset, the same text as ``DATASET.md`` in github.com/gastruc/osv5m)::

    train.csv  test.csv                      # one row a photo; ``id`` is a big integer
    images/train/00.zip ... images/train/97.zip   # 98 zips of about 50k JPEGs each
    images/test/00.zip  ... images/test/04.zip    # 5 zips

The card does not say which folder the JPEGs have inside a zip; the dataset's own loading
script pairs a member with its row by the member's file name without its extension
(``os.path.splitext(os.path.split(path)[-1])[0]`` is the ``id``), so we do the same: any inner
folder works (``<id>.jpg``, ``train/<id>.jpg``, ``00/<id>.jpg``...).

How it works: :func:`index_zips` reads each zip's central directory once (``zipfile``) and
keeps, per member, numpy arrays only (name stem, offset of its local header, compressed and
plain sizes, method, CRC): no dict of millions of Python strings. :func:`attach` joins those to
the table's ids by sorting, so each row knows its zip and offset. A :class:`ZipMember` is one
row's handle; :meth:`ZipMember.read` reads the bytes with a positional read (``os.pread``) on a
descriptor each process opens for itself on first use (a DataLoader worker forked from the
main process never uses the parent's), inflates them and checks the CRC. The bytes then go
through the same decoding as a file (:func:`hiergeo.data.images.load_image`, the reduced-size
JPEG decode included). A header check (:func:`hiergeo.data.images.probe_image`, which training
runs on every photo up front) reads only the member's first :data:`HEAD_BYTES`
(:meth:`ZipMember.read_head`), so damage further in is found when the photo is loaded.

A zip whose central directory cannot be read (a truncated download: the directory is at the
end) stops everything with an :class:`~gazetteer.InputError` naming the file, before any
extraction: its rows cannot even be named, and extracting 97 of 98 zips without saying so
would bias the data. Download it again. (Moving it away is refused as well when more than
:data:`MAX_MISSING_SHARE` of the rows are then in no zip, unless the caller allows it: a store
extracted without a zip is not completed by a rerun once the zip is back, see
:func:`hiergeo.features.extract`.) A member whose data is damaged (CRC mismatch, cut short) is
skipped with its reason, as a corrupt JPEG file is.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer import InputError

log = logging.getLogger(__name__)

#: the extra columns a table read from zips carries, one value per row (see :func:`attach`)
ZIP_COLUMNS = ["zip_file", "zip_offset", "zip_csize", "zip_size", "zip_method", "zip_crc"]
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_ENCRYPTED = -1  # zip_method of an encrypted member (the flag bit in the directory)
_LOCAL = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_NO_ZIP = -1
#: ``zip_offset`` of a row whose id is in no zip and is no file either
NOT_IN_ZIPS = -2
#: the share of a table's rows that may be in no zip (nor a ``{id}.jpg`` file beside the zips)
#: before :func:`check_found` refuses the table: one of OSV-5M's 98 train zips holds about
#: 1.02% of the rows, so a single zip missing or moved away is refused. Callers offer a way
#: to go on anyway (``python -m hiergeo.features --allow-missing``).
MAX_MISSING_SHARE = 0.01
#: what :meth:`ZipMember.read_head` reads: a JPEG's header (its SOF, after the EXIF of at
#: most 64 KB a segment) usually fits; a probe that cannot tell from it reads the whole member
HEAD_BYTES = 64 * 1024
#: a member larger than this (as the zip's directory says) is refused unread: a photo is a
#: few MB, and inflating a crafted member could otherwise take any amount of memory
MAX_MEMBER_BYTES = 512 * 2**20


@dataclass
class ZipIndex:
    """Every image member of a folder's zips, as parallel arrays (``stem`` sorted)."""

    zips: list[str]
    stem: np.ndarray     # bytes (S), the member's file name without extension, utf-8
    name: np.ndarray     # bytes (S), the member's full name in its zip
    zip_no: np.ndarray   # int16, into ``zips``
    offset: np.ndarray   # int64, of the member's local header
    csize: np.ndarray    # int64
    size: np.ndarray     # int64
    method: np.ndarray   # int8: 0 stored, 8 deflated, -1 encrypted, other: unsupported
    crc: np.ndarray      # uint32

    def __len__(self) -> int:
        return len(self.stem)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in
                   ("stem", "name", "zip_no", "offset", "csize", "size", "method", "crc"))


def zip_files(folder: str | Path) -> list[Path]:
    """The ``*.zip`` files directly in ``folder``, sorted (none: an empty list)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".zip" and p.is_file())


def _read_directory(path: Path) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: not a readable zip ({type(exc).__name__}: {exc}); a download cut short "
            "loses the zip's directory, which is at its end. Download this file again (the "
            "command is in docs/osv5m.md) before extracting: a store made without it is not "
            "completed by a later rerun"
        ) from None


def index_zips(folder: str | Path, progress: bool = False) -> ZipIndex:
    """Read the central directory of every zip in ``folder`` (each once) into a
    :class:`ZipIndex`. Raises :class:`InputError` naming a zip that cannot be read. A name
    stem found in two members keeps the first (zips in name order) and is logged."""
    paths = zip_files(folder)
    if len(paths) > np.iinfo(np.int16).max:
        raise InputError(f"{folder}: {len(paths)} zip files; at most 32767 are supported")
    parts = []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="zip", desc="indexing zips")
    for k, p in enumerate(paths):
        try:
            infos = [i for i in _read_directory(p)
                     if not i.is_dir() and i.filename.lower().endswith(_SUFFIXES)]
        except InputError:
            if bar is not None:
                bar.close()  # the message, not a half-drawn bar, is the last line
            raise
        names = [i.filename for i in infos]
        stems = [os.path.splitext(os.path.basename(n))[0] for n in names]
        method = np.array([_ENCRYPTED if i.flag_bits & 0x1 else i.compress_type for i in infos],
                          dtype=np.int16)
        parts.append(dict(
            stem=np.array([s.encode() for s in stems], dtype=bytes),
            name=np.array([n.encode() for n in names], dtype=bytes),
            zip_no=np.full(len(infos), k, dtype=np.int16),
            offset=np.array([i.header_offset for i in infos], dtype=np.int64),
            csize=np.array([i.compress_size for i in infos], dtype=np.int64),
            size=np.array([i.file_size for i in infos], dtype=np.int64),
            method=np.clip(method, -1, 127).astype(np.int8),
            crc=np.array([i.CRC for i in infos], dtype=np.uint32)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    keys = ("stem", "name", "zip_no", "offset", "csize", "size", "method", "crc")
    if parts:
        cat = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    else:
        cat = {"stem": np.array([], dtype="S1"), "name": np.array([], dtype="S1"),
               "zip_no": np.zeros(0, np.int16), "offset": np.zeros(0, np.int64),
               "csize": np.zeros(0, np.int64), "size": np.zeros(0, np.int64),
               "method": np.zeros(0, np.int8), "crc": np.zeros(0, np.uint32)}
    order = np.argsort(cat["stem"], kind="stable")  # stable: the first zip's copy first
    cat = {k: v[order] for k, v in cat.items()}
    dup = np.flatnonzero(cat["stem"][1:] == cat["stem"][:-1]) + 1
    if len(dup):
        log.warning("%d photo names appear in two zips of %s (e.g. %s); the first zip's copy "
                    "is read", len(dup), folder, cat["stem"][dup[0]].decode(errors="replace"))
        keep = np.ones(len(order), bool)
        keep[dup] = False
        cat = {k: v[keep] for k, v in cat.items()}
    log.info("indexed %d photos in %d zips of %s in %.1f s", len(cat["stem"]), len(paths),
             folder, time.perf_counter() - t0)
    return ZipIndex(zips=[str(p) for p in paths], **cat)


def attach(df: pd.DataFrame, index: ZipIndex, folder: str | Path) -> pd.DataFrame:
    """``df`` (with ``id``) plus ``path`` and :data:`ZIP_COLUMNS`: the member whose name stem
    is the row's id. A row with no member keeps ``{folder}/{id}.jpg`` as its path (read as a
    file if it is one) and ``zip_file`` <NA>."""
    ids = np.array([s.encode() for s in df["id"].astype(str)], dtype=bytes)
    n = len(index)
    pos = np.searchsorted(index.stem, ids) if n else np.zeros(len(ids), np.int64)
    found = pos < n
    found[found] = index.stem[pos[found]] == ids[found]
    at = np.where(found, pos, 0)
    df = df.copy()
    zip_no = np.where(found, index.zip_no[at] if n else _NO_ZIP, _NO_ZIP).astype(np.int16)
    df["zip_file"] = pd.Categorical.from_codes(zip_no, categories=index.zips or ["-"]) \
        if index.zips else pd.Categorical([None] * len(df))
    for col, arr in (("zip_offset", index.offset), ("zip_csize", index.csize),
                     ("zip_size", index.size)):
        df[col] = np.where(found, arr[at] if n else 0, -1).astype(np.int64)
    df["zip_method"] = np.where(found, index.method[at] if n else 0, 0).astype(np.int8)
    df["zip_crc"] = np.where(found, index.crc[at] if n else 0, 0).astype(np.uint32)
    folder = Path(folder)
    names = index.name[at] if n else np.array([b""] * len(df))
    df["path"] = [f"{index.zips[z]}::{m.decode()}" if z >= 0 else str(folder / f"{i}.jpg")
                  for z, m, i in zip(zip_no, names, df["id"], strict=True)]
    # a row in no zip may still be a loose file; else it is skipped as not in any zip. One
    # listing of the folder, not a stat per missing id (4.9M of them with a wrong folder)
    missing = np.flatnonzero(~found)
    files = _loose_files(folder) if len(missing) else set()
    loose = np.array([f"{df['id'].iat[r]}.jpg" in files for r in missing], dtype=bool)
    df.iloc[missing[~loose], df.columns.get_loc("zip_offset")] = NOT_IN_ZIPS
    return df


def _loose_files(folder: Path) -> set[str]:
    """The names of the ``*.jpg`` files directly in ``folder`` (one directory listing)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.name.endswith(".jpg") and e.is_file()}
    except OSError:
        return set()


def check_found(df: pd.DataFrame, index: ZipIndex, folder: str | Path, source: str | Path,
                allow_missing: bool = False) -> None:
    """Refuse (:class:`InputError`, before anything is written) a table from :func:`attach`
    whose ids are in none of ``folder``'s zips, or, unless ``allow_missing``, of which more
    than :data:`MAX_MISSING_SHARE` are in no zip (nor a ``{id}.jpg`` file there): a zip
    missing or the wrong folder, found now rather than as a store of skipped rows."""
    n = len(df)
    miss = int((df["zip_offset"].to_numpy() == NOT_IN_ZIPS).sum())
    if not n or not miss:
        return
    where = f"{folder}: {len(index.zips)} zip(s) with {len(index):,} photos"
    if miss == n:
        raise InputError(f"{where}, but none of the {n:,} ids of {source} is in them (nor a "
                         "{id}.jpg file there): is this the table's image folder "
                         "(--image-dir)?")
    if miss > MAX_MISSING_SHARE * n and not allow_missing:
        raise InputError(f"{where}; {miss:,} of the {n:,} ids of {source} "
                         f"({miss / n:.1%}, more than {MAX_MISSING_SHARE:.0%}) are in none of "
                         "them: a zip missing or cut short? Download it (docs/osv5m.md), or "
                         "pass --allow-missing to go on without those photos (listed in "
                         "skipped.csv)")


def has_zip_columns(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in ZIP_COLUMNS)


# ---- reading one member ------------------------------------------------------------------

_fds: dict[str, int] = {}
_fd_lock = threading.Lock()
_fd_pid: list[int | None] = [None]


def _fd(path: str) -> int:
    """This process's read-only descriptor of ``path``, opened on first use. After a fork
    the child opens its own (the parent's stay untouched)."""
    with _fd_lock:
        if _fd_pid[0] != os.getpid():
            _fds.clear()
            _fd_pid[0] = os.getpid()
        fd = _fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            _fds[path] = fd
        return fd


def _pread(path: str, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(_fd(path), n, offset)
    with open(path, "rb") as f:  # no pread (Windows): a handle per read
        f.seek(offset)
        return f.read(n)


@dataclass(frozen=True)
class ZipMember:
    """One photo inside a zip: where its bytes are. ``str()`` is ``zip::member``."""

    zip: str
    member: str
    offset: int
    csize: int
    size: int
    method: int
    crc: int

    def __str__(self) -> str:
        return f"{self.zip}::{self.member}"

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.member)[1].lower()

    def _data_offset(self) -> tuple[int, str | None]:
        """Where the member's data starts (after its local header), or why it cannot be
        read: the checks that need no data read."""
        if self.offset == NOT_IN_ZIPS:
            return 0, f"not in any zip of {self.zip} (nor a file there)"
        if self.method == _ENCRYPTED:
            return 0, "encrypted zip member (not supported)"
        if max(self.size, self.csize) > MAX_MEMBER_BYTES:
            return 0, f"zip member of {max(self.size, self.csize):,} bytes, refused (more " \
                      f"than {MAX_MEMBER_BYTES:,})"
        if self.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return 0, f"zip compression method {self.method} not supported (stored or " \
                      "deflated only)"
        try:
            head = _pread(self.zip, _LOCAL.size, self.offset)
        except OSError as exc:
            return 0, f"zip unreadable ({exc})"
        if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
            return 0, "corrupt zip member (no local header where the directory says)"
        _, nlen, elen = _LOCAL.unpack(head)
        return self.offset + _LOCAL.size + nlen + elen, None

    def read_head(self, n: int = HEAD_BYTES) -> tuple[bytes | None, str | None]:
        """``(the first n bytes of the member, inflated, None)`` or ``(None, reason)``: what
        a header check needs, without reading, inflating and CRC-checking the whole photo.
        A member cut short by the zip's end is caught (one ``fstat``); damage further in is
        found only by :meth:`read`."""
        start, reason = self._data_offset()
        if reason is not None:
            return None, reason
        try:
            if start + self.csize > os.fstat(_fd(self.zip)).st_size:
                return None, "truncated zip member (the zip file ends inside it)"
            want = n if self.method == zipfile.ZIP_STORED else min(self.csize, n)
            data = _pread(self.zip, min(want, self.csize), start)
        except OSError as exc:
            return None, f"zip unreadable ({exc})"
        if self.method == zipfile.ZIP_DEFLATED:
            try:
                data = zlib.decompressobj(-15).decompress(data, n)
            except zlib.error as exc:
                return None, f"corrupt zip member ({exc})"
        return data[:n], None

    def read(self) -> tuple[bytes | None, str | None]:
        """``(the member's bytes, None)`` or ``(None, reason)``; never raises for bad data."""
        start, reason = self._data_offset()
        if reason is not None:
            return None, reason
        try:
            data = _pread(self.zip, self.csize, start)
        except OSError as exc:
            return None, f"zip unreadable ({exc})"
        if len(data) < self.csize:
            return None, "truncated zip member (the zip file ends inside it)"
        if self.method == zipfile.ZIP_DEFLATED:
            try:
                d = zlib.decompressobj(-15)
                data = d.decompress(data, self.size + 1)
            except zlib.error as exc:
                return None, f"corrupt zip member ({exc})"
        if len(data) != self.size or zlib.crc32(data) != self.crc:
            return None, "corrupt zip member (CRC or size mismatch)"
        return data, None


class ImageSources:
    """``sources[row]``: the path of row ``row`` of a records table, or its
    :class:`ZipMember` when the table was read from zips. Picklable (DataLoader workers get
    a copy; descriptors are opened per process when read)."""

    def __init__(self, df: pd.DataFrame):
        # the column as it is, read a row at a time: turning it into Python strings took
        # 0.37 s at 2M rows (about 0.9 s at 4.9M), and the features command makes one a shard
        self.paths = df["path"]
        self.zip = has_zip_columns(df)
        if self.zip:
            cat = df["zip_file"].astype("category")
            self.zips = [str(c) for c in cat.cat.categories]
            self.codes = cat.cat.codes.to_numpy(np.int16)
            self.cols = {c: df[c].to_numpy() for c in ZIP_COLUMNS[1:]}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row):
        row = int(row)
        path = str(self.paths.iat[row])
        if not self.zip:
            return path
        c = self.cols
        if self.codes[row] < 0:
            if c["zip_offset"][row] != NOT_IN_ZIPS:
                return path  # a loose file beside the zips
            p = Path(path)
            return ZipMember(str(p.parent), p.name, NOT_IN_ZIPS, 0, 0, 0, 0)
        member = path.split("::", 1)[1]
        return ZipMember(self.zips[self.codes[row]], member, int(c["zip_offset"][row]),
                         int(c["zip_csize"][row]), int(c["zip_size"][row]),
                         int(c["zip_method"][row]), int(c["zip_crc"][row]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))
