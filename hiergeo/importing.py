"""Import precomputed embeddings into a feature store: ``python -m hiergeo.features import``.

Days of extraction are skipped when someone already computed the embeddings. Two layouts::

    # (a) a matrix beside a table: row i of the matrix is row i of the table
    python -m hiergeo.features import --out STORE --matrix emb.npy --table meta.csv
    python -m hiergeo.features import --out STORE --matrix emb.npz --key street_clip \\
        --table meta.parquet --id-column image_id --latitude lat --longitude lon
    python -m hiergeo.features import --out STORE --matrix emb.parquet --embedding-column emb

    # (b) WebDataset shards whose samples carry an embedding and a JSON with the position
    python -m hiergeo.features import --out STORE \\
        --webdataset 'osv5m/train/{000000..000490}.tar' --embedding-key street_clip.npy

(a) ``.npy`` is opened memory-mapped (its header only) and read a shard at a time with
plain reads (5M x 1024 never loads whole, and the pages read do not stay resident as a
mapping's would); an ``.npz`` member stored uncompressed (``np.savez``) is read the same way,
a compressed one (``np.savez_compressed``) whole. One numeric Parquet column per dimension is
not supported (make it a list column). A Parquet matrix is one list or fixed-size-list
column (``--embedding-column``), read forward once (one batch of 65,536 rows in memory);
the table (``--table``: CSV or Parquet; default the Parquet matrix's own file) gives
``--id-column``, ``--latitude``, ``--longitude`` and any OSV-5M label columns
(``unique_country`` ...).

(b) follows the layout of PLONK's OSV-5M shards (github.com/nicolas-dufour/plonk): its
``plonk/data/to_webdataset/osv_to_wds.py`` writes each sample as ``jpg`` (the photo),
``json`` (the OSV-5M CSV row: ``id``, ``latitude``, ``longitude``, ``unique_country`` ...),
``street_clip.npy`` (StreetCLIP's CLS embedding, 1024 floats) and
``dinov2_vitl14_registers.npy`` (DINOv2 ViT-L/14 with registers, 1024), the arrays as
``np.save`` bytes; its loader ``plonk/data/webdataset.py`` (``GPSWebdataset``) reads
``{embedding_name}.npy`` and the position from the ``json`` entry's ``latitude`` and
``longitude``. Here ``--embedding-key`` picks the entry (an ``.npy``), ``--metadata-key`` the
JSON (default ``json``); the id is the JSON's ``--id-column`` field, else the sample's key.
Tars are read with ``tarfile`` a header at a time, the entries not wanted (the photos)
seeked over (:mod:`hiergeo.data.wds`).

Resuming. A store is written a shard at a time (``--shard-size`` input rows or samples, the
skipped ones included) exactly as extraction writes it (:func:`hiergeo.data.store.write_shard`:
a shard is whole or absent), so the same command run again skips every finished shard and a
kill loses at most the shard in flight. For a matrix, shard k is rows ``[k*S, (k+1)*S)``.
Tars cannot be counted without reading them all (hours at 5M samples), so a shard never spans
two tars and ``shards/shard-K.source.json`` (written before the shard itself) records which
tar it came from, the byte range of its samples and whether it is that tar's last; a rerun
walks the finished shards' records and seeks straight to the first sample not yet stored.
A rerun whose inputs or settings differ from the store's (files, keys, columns, fields,
name, dtype, shard size) is refused, naming the setting: resuming would mix two models'
or two readings' rows in one store.

Bad input. A row or sample without a valid position (missing, NaN, outside +-90/+-180), with
a non-finite embedding, or (after the first) without the embedding entry is skipped and listed
in ``skipped.csv`` with its reason. A damaged tar keeps the samples before the damage; the
rest of that tar is reported (a warning naming the file, ``report.json``'s ``damaged``).
Mismatched sizes, embeddings of varying length, non-numeric arrays, a wrong key or a
repeated id (ids must be unique: a matrix's table is checked before any shard, tars as each
sample is read, the stored shards' ids included on a resume) stop the import with an
:class:`~gazetteer.InputError` naming the problem and the fix.

The store's ``backbone`` is ``imported:<name>`` (``--name``, default the embedding key or the
matrix file's stem), its ``weights`` ``imported`` and its ``source`` the layout, files
(bytes and the sha256 of their first MiB), keys and columns. A model trained on it predicts
from a store of the same embeddings; on photos it says which backbone to extract with.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gazetteer import InputError

from .data.records import LABEL_COLUMNS
from .data.store import FORMAT, finalize, shard_done, shard_paths, write_shard
from .data.wds import TarSamples, expand_shards
from .features import _check_shard_ids, _ids_digest
from .files import atomic_write_text, one_line

log = logging.getLogger(__name__)

WEIGHTS = "imported"
#: what a rerun must match (else the store's rows came from other inputs or settings): a
#: store.json key or a path into it, and how a user names that setting. ``source``'s file
#: names are left out: ``inputs`` records each file resolved, with its size and first MiB.
FIXED = (
    ("layout", "the layout (--matrix or --webdataset)"),
    ("inputs", "the input files"),
    ("source.embedding_key", "--embedding-key"),
    ("source.metadata_key", "--metadata-key"),
    ("source.key", "--key"),
    ("source.column", "--embedding-column"),
    ("source.columns.id", "--id-column"), ("source.fields.id", "--id-column"),
    ("source.columns.latitude", "--latitude"), ("source.fields.latitude", "--latitude"),
    ("source.columns.longitude", "--longitude"), ("source.fields.longitude", "--longitude"),
    ("backbone", "--name"),
    ("weights", "weights"),
    ("dtype", "--dtype"),
    ("shard_size", "--shard-size"),
    ("n_records", "the table's number of rows"),
    ("ids_sha256", "the table's ids"),
)
SKIP_COLUMNS = ["id", "path", "reason"]


def _file_ref(path: Path) -> dict:
    """A cheap fingerprint of an input (hashing 20 GB would take longer than importing it)."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "head_sha256": head}


def position_reason(lat, lon) -> str | None:
    """Why ``(lat, lon)`` is no position (None when it is one)."""
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        return f"no usable latitude/longitude ({str(lat)[:20]!r}, {str(lon)[:20]!r})"
    if not (np.isfinite(lat) and np.isfinite(lon)):
        return f"latitude/longitude not finite ({lat}, {lon})"
    if abs(lat) > 90 or abs(lon) > 180:
        return f"latitude/longitude out of range ({lat}, {lon})"
    return None


def _numeric(a: np.ndarray, where: str) -> None:
    if a.dtype.kind not in "fiu":
        raise InputError(f"{where}: embeddings of type {a.dtype}, not numbers; store them "
                         "as float16/float32 arrays")


# -- matrices --------------------------------------------------------------------------
def _npz_member(path: Path, key: str | None) -> np.ndarray:
    """An ``.npz`` member: memory-mapped when stored uncompressed, else read whole."""
    with zipfile.ZipFile(path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if key is None:
            if len(names) != 1:
                raise InputError(f"{path}: holds arrays {names}; pick one with --key")
            key = names[0]
        if key not in names:
            raise InputError(f"{path}: no array {key!r}; it holds {names} (--key)")
        info = z.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local header: name and extra lengths at 26, 28
        f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
               + int.from_bytes(local[28:30], "little"))
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            with np.load(path, allow_pickle=False) as npz:
                return npz[key]
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        raise InputError(f"{path}: array {key!r} holds Python objects, not numbers")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


class ParquetMatrix:
    """A Parquet list column as rows ``[a, b)`` of a matrix, read through its row groups.

    The import asks for shards in ascending order, so one forward iterator over the column's
    batches serves them all, the rows of a batch beyond one shard carried over to the next:
    each row is decoded once, and memory holds one batch (65,536 rows of the embedding
    column) besides the shard being built. A request that does not start where the last one
    ended (the first after a resume) restarts the iterator at the row group holding its
    first row, decoding the rows before it in that group once."""

    BATCH = 65_536

    def __init__(self, path: Path, column: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.column = path, column
        self.file = pq.ParquetFile(path)
        names = self.file.schema_arrow.names
        if column not in names:
            raise InputError(f"{path}: no column {column!r}; columns are {names} "
                             "(--embedding-column)")
        t = self.file.schema_arrow.field(column).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)
                or pa.types.is_fixed_size_list(t)):
            raise InputError(f"{path}: column {column!r} is {t}, not a list of numbers (one "
                             "embedding per row); name the list column with --embedding-column")
        if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise InputError(f"{path}: column {column!r} holds {t.value_type}, not numbers")
        md = self.file.metadata
        self.starts = np.cumsum([0] + [md.row_group(i).num_rows
                                       for i in range(md.num_row_groups)])
        self._batches, self._pos, self._left = None, 0, None
        dim = 0
        if self.starts[-1]:
            first = next(self.file.iter_batches(batch_size=1, columns=[column]))
            v = first.column(0)[0].values  # None when row 0 has none: rows() says so
            dim = 0 if v is None else len(v)
        self.shape = (int(self.starts[-1]), dim)

    def rows(self, a: int, b: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        b = min(b, self.shape[0])
        if a >= b:
            return np.zeros((0, self.shape[1]), np.float32)
        if self._batches is None or self._pos != a:
            g = int(np.searchsorted(self.starts, a, side="right")) - 1
            self._batches = self.file.iter_batches(
                batch_size=self.BATCH, row_groups=list(range(g, len(self.starts) - 1)),
                columns=[self.column])
            self._pos, self._left = int(self.starts[g]), None
        parts = []
        while self._pos < b:  # self._left: the decoded rows from self._pos on
            if self._left is None or len(self._left) == 0:
                self._left = next(self._batches).column(0)
            if self._pos < a:
                skip = min(a - self._pos, len(self._left))
            else:
                skip = min(b - self._pos, len(self._left))
                parts.append(self._left.slice(0, skip))
            self._left, self._pos = self._left.slice(skip), self._pos + skip
        col = pa.concat_arrays(parts)
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if col.null_count or len(set(lengths.tolist())) > 1:
            bad = (np.flatnonzero(pd.isna(lengths)).tolist()
                   or np.flatnonzero(lengths != lengths[0]).tolist())
            what = ("no embedding" if col.null_count
                    else f"an embedding of another length than row {a}'s {lengths[0]}")
            raise InputError(f"{self.path}: row {a + bad[0]} of {self.column!r} holds {what}: "
                             "every row needs an embedding of the same length")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1)


def _row_reader(m: np.ndarray):
    """Rows ``[a, b)`` of a matrix: a mapped C-order one read from its file with plain
    reads, so the pages of rows already imported do not pile up in the process's resident
    memory as a mapping's would (20 GB at OSV-5M's size); anything else sliced."""
    if not (isinstance(m, np.memmap) and m.flags.c_contiguous and m.filename):
        return lambda a, b: np.asarray(m[a:b])
    row = m.dtype.itemsize * m.shape[1]

    def rows(a: int, b: int) -> np.ndarray:
        x = np.fromfile(m.filename, m.dtype, count=(b - a) * m.shape[1],
                        offset=m.offset + a * row)
        return x.reshape(b - a, m.shape[1])

    return rows


def open_matrix(path: Path, key: str | None, column: str | None):
    """The matrix in ``path`` (``.npy``, ``.npz``, ``.parquet``): anything with ``shape``
    and rows ``[a, b)`` as an array (``rows(a, b)`` or slicing)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (--matrix)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            m = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            m = _npz_member(path, key)
        elif suffix == ".parquet":
            return ParquetMatrix(path, column or "embedding")
        else:
            raise InputError(f"{path}: --matrix takes .npy, .npz or .parquet")
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read it as {suffix} ({one_line(exc)})") from None
    _numeric(m, str(path))
    if m.ndim != 2:
        raise InputError(f"{path}: an array of shape {m.shape}, not a matrix (rows x dim)")
    return m


def read_position_table(path: Path, id_col: str, lat: str, lon: str) -> pd.DataFrame:
    """``id, latitude, longitude`` and any OSV-5M label columns of a CSV or Parquet table
    (only those columns are read: a Parquet file may hold the embeddings too)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (--table)")
    want = [id_col, lat, lon]
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            cols = [c for c in want if c in names]
            labels = [c for c in LABEL_COLUMNS if c in names and c not in want]
            df = pd.read_parquet(path, columns=cols + labels)
        else:
            # only the columns kept: OSV-5M's train.csv read whole, as strings, takes GBs
            keep = set(want) | set(LABEL_COLUMNS)
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                             usecols=lambda c: c in keep)
            labels = [c for c in LABEL_COLUMNS if c in df.columns and c not in want]
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot read this table ({one_line(exc)})") from None
    missing = [c for c in want if c not in df.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (columns: {list(df.columns)[:12]});"
                         " name the columns with --id-column, --latitude, --longitude")
    out = pd.DataFrame({"id": df[id_col].astype(str).to_numpy(),
                        "latitude": pd.to_numeric(df[lat].replace("", np.nan),
                                                  errors="coerce").astype(float).to_numpy(),
                        "longitude": pd.to_numeric(df[lon].replace("", np.nan),
                                                   errors="coerce").astype(float).to_numpy()})
    for c in labels:
        out[c] = df[c].astype(str).to_numpy()
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        raise InputError(f"{path}: ids must be unique; repeated: "
                         f"{out.loc[dup, 'id'].unique()[:5].tolist()} (--id-column)")
    return out


# -- the store -------------------------------------------------------------------------
def _at(meta: dict, path: str):
    for part in path.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def _short(v) -> str:
    return repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."


def _mismatch(old: dict, new: dict) -> str | None:
    """The first setting in which ``new`` differs from the stored ``old``, in words."""
    for path, flag in FIXED:
        a, b = _at(old, path), _at(new, path)
        if a == b:
            continue
        if path == "inputs" and isinstance(a, list) and isinstance(b, list):
            for x, y in zip(a, b, strict=False):
                if x.get("path") != y.get("path"):
                    return (f"the input files differ ({x.get('path')} was imported, not "
                            f"{y.get('path')})")
                if x != y:
                    return f"the input file {y.get('path')} changed (its size or first MiB)"
            return f"the input files differ ({len(a)} were imported, {len(b)} given now)"
        return f"it was made with {flag} {_short(a)}, not {_short(b)}"
    if old.get("dim") is not None and new.get("dim") is not None and old["dim"] != new["dim"]:
        return f"its embeddings have {old['dim']} values, these {new['dim']}"
    return None


def _write_meta(out: Path, meta: dict) -> None:
    """Check ``store.json`` against ``meta`` when a store is there, then (re)write it."""
    path = out / "store.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        why = _mismatch(old, meta)
        if why:
            raise InputError(f"{out} holds a store made from other inputs or settings: {why}; "
                             f"choose another --out, or remove {out} to start over")
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    atomic_write_text(path, json.dumps(meta, indent=2, default=str) + "\n")


def _base_meta(name: str, dtype: str, shard_size: int, layout: str, inputs: list[Path],
               source: dict) -> dict:
    return {"format": FORMAT, "backbone": f"imported:{name}", "weights": WEIGHTS,
            "dim": None, "dtype": dtype, "data_config": None, "shard_size": shard_size,
            "layout": layout, "inputs": [_file_ref(p) for p in inputs],
            "source": {"layout": layout, **source}}


def _skipped(ids, paths, reasons) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "path": list(paths), "reason": list(reasons)},
                        columns=SKIP_COLUMNS, dtype=object).astype(str)


def import_matrix(out: str | Path, matrix: str | Path, *, table: str | Path | None = None,
                  key: str | None = None, column: str | None = None, id_col: str = "id",
                  lat: str = "latitude", lon: str = "longitude", name: str | None = None,
                  shard_size: int = 10_000, dtype: str = "float16",
                  progress: bool = True) -> dict:
    """Import a matrix (``.npy``/``.npz``/Parquet list column) and its table into ``out``.
    Returns the report (:func:`hiergeo.data.store.finalize`'s, plus ``shards_written``)."""
    out, matrix = Path(out), Path(matrix)
    table = Path(table) if table is not None else None
    if table is None and matrix.suffix.lower() != ".parquet":
        raise InputError("--table is needed with a .npy/.npz matrix (the ids and positions "
                         "of its rows)")
    m = open_matrix(matrix, key, column)
    t = read_position_table(table or matrix, id_col, lat, lon)
    n, dim = int(m.shape[0]), int(m.shape[1])
    if n != len(t):
        raise InputError(f"{matrix}: {n:,} rows, the table {table or matrix} {len(t):,}: row i "
                         "of the matrix must be row i of the table (same rows, same order)")
    name = name or (key or column or matrix.stem)
    inputs = [matrix] + ([table] if table is not None and table != matrix else [])
    meta = {**_base_meta(name, dtype, shard_size, "matrix", inputs,
                         {"matrix": str(matrix), "key": key, "column": column,
                          "table": str(table or matrix),
                          "columns": {"id": id_col, "latitude": lat, "longitude": lon}}),
            "dim": dim, "n_records": n, "ids_sha256": _ids_digest(t)}
    _write_meta(out, meta)
    rows_of = m.rows if isinstance(m, ParquetMatrix) else _row_reader(m)
    n_shards = max(1, -(-n // shard_size))
    todo = [k for k in range(n_shards) if not shard_done(out, k)]
    if len(todo) < n_shards:
        log.info("%s: %d of %d shards already done, resuming", out, n_shards - len(todo),
                 n_shards)
    bar = tqdm(total=sum(min(shard_size, n - k * shard_size) for k in todo), unit="row",
               disable=not progress, desc="import")
    try:
        for k in todo:
            a, b = k * shard_size, min((k + 1) * shard_size, n)
            x = rows_of(a, b)
            part = t.iloc[a:b].reset_index(drop=True)
            reasons = [position_reason(la, lo) for la, lo in zip(part["latitude"],
                                                                  part["longitude"], strict=True)]
            finite = np.isfinite(x).all(axis=1) if x.dtype.kind == "f" else np.ones(len(x), bool)
            reasons = [r or (None if f else "embedding not finite (NaN or inf)")
                       for r, f in zip(reasons, finite, strict=True)]
            keep = np.array([r is None for r in reasons], bool)
            feats = torch.from_numpy(np.ascontiguousarray(x[keep], dtype=np.float32))
            bad = np.flatnonzero(~keep)
            write_shard(out, k, feats.to(getattr(torch, dtype)),
                        part[keep].reset_index(drop=True),
                        _skipped(part["id"].to_numpy()[bad], [f"{matrix} row {a + i}" for i in bad],
                                 [reasons[i] for i in bad]))
            bar.update(b - a)
    finally:
        bar.close()
    _check_shard_ids(out, t, shard_size, n_shards)
    report = finalize(out, n_shards)
    _write_meta(out, {**meta, "rows": report["images_read"]})
    return {**report, "finalized": True, "shards_written": todo, "dim": dim,
            "backbone": meta["backbone"], "layout": "matrix", "damaged": {}}


# -- WebDataset shards -----------------------------------------------------------------
class _Decoder:
    """One sample -> (id, position, labels, vector) or a skip reason; errors that mean the
    settings are wrong raise :class:`InputError`."""

    def __init__(self, embedding_key: str, metadata_key: str, id_col: str, lat: str,
                 lon: str, dim: int | None):
        self.key, self.meta_key = embedding_key, metadata_key
        self.id_col, self.lat, self.lon, self.dim = id_col, lat, lon, dim
        self.seen_key = dim is not None
        self._headers: dict[bytes, tuple] = {}

    def __call__(self, s, tar: Path):
        where = f"{tar}: sample {s.key!r}"
        meta = {}
        if self.meta_key in s.entries:
            try:
                meta = json.loads(s.entries[self.meta_key])
            except (ValueError, UnicodeDecodeError) as exc:
                return str(s.key), f"{self.meta_key} entry is not JSON ({one_line(exc, 60)})"
            if not isinstance(meta, dict):
                meta = {}
        sid = str(meta.get(self.id_col, s.key))
        if self.key not in s.entries:
            has = ", ".join(sorted(s.entries)) or "none"
            if not self.seen_key:
                raise InputError(f"{where} has no {self.key!r} entry; its entries are {has}: "
                                 "pick the embedding with --embedding-key")
            return sid, f"no {self.key!r} entry (has {has})"
        if self.lat not in meta or self.lon not in meta:
            return sid, (f"no coordinates ({self.lat!r}/{self.lon!r} missing from its "
                         f"{self.meta_key!r} entry)")
        why = position_reason(meta[self.lat], meta[self.lon])
        if why:
            return sid, why
        v = self._array(s.entries[self.key], where)
        if not np.isfinite(v).all():
            return sid, "embedding not finite (NaN or inf)"
        # a missing level as OSV-5M's CSV spells it ("nan"), whether the JSON has null or NaN
        labels = {c: "nan" if meta[c] is None or meta[c] != meta[c] else str(meta[c])
                  for c in LABEL_COLUMNS if c in meta}
        return sid, (float(meta[self.lat]), float(meta[self.lon]), labels, v)

    def _npy(self, raw: bytes) -> np.ndarray:
        """``np.load`` of ``.npy`` bytes, the header parsed once per distinct header
        (every sample of a shard has the same one: np.load's parsing was a third of the
        import's time)."""
        if raw[:8] != b"\x93NUMPY\x01\x00":
            return np.load(io.BytesIO(raw), allow_pickle=False)
        end = 10 + int.from_bytes(raw[8:10], "little")
        head = raw[:end]
        if head not in self._headers:
            a = np.load(io.BytesIO(raw), allow_pickle=False)
            self._headers[head] = (a.dtype, a.shape, np.isfortran(a))
            return a
        dtype, shape, fortran = self._headers[head]
        return np.frombuffer(raw, dtype, offset=end).reshape(shape,
                                                               order="F" if fortran else "C")

    def _array(self, raw: bytes, where: str) -> np.ndarray:
        if not self.key.endswith(".npy"):
            raise InputError(f"{where}: {self.key!r} is not an .npy entry; pass the key of an "
                             "array saved with np.save (e.g. street_clip.npy)")
        try:
            v = self._npy(raw)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{where}: {self.key!r} is not a readable .npy array "
                             f"({one_line(exc, 80)})") from None
        _numeric(v, f"{where}: {self.key!r}")
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1:
            raise InputError(f"{where}: {self.key!r} has shape {v.shape}, not one vector")
        if self.dim is None:
            self.dim = len(v)
        elif len(v) != self.dim:
            raise InputError(f"{where}: {self.key!r} has {len(v)} values, earlier samples "
                             f"{self.dim}: every embedding needs the same length (a mix of "
                             "models in these shards? import them into separate stores)")
        self.seen_key = True
        return v


def _sidecar(out: Path, k: int) -> Path:
    return shard_paths(out, k)["features"].with_suffix(".source.json")


def _resume_point(out: Path) -> tuple[int, int, int, dict]:
    """(next shard, tar, byte offset) after the finished shards, and the damage they met."""
    k, tar, offset, damaged = 0, 0, 0, {}
    while True:
        p = _sidecar(out, k)
        if not (p.exists() and shard_done(out, k)):
            return k, tar, offset, damaged
        rec = json.loads(p.read_text())
        if rec.get("damage"):
            damaged[rec["file"]] = rec["damage"]
        k += 1
        tar, offset = (rec["tar"] + 1, 0) if rec["last"] else (rec["tar"], rec["end"])


def import_webdataset(out: str | Path, shards: list[str], *, embedding_key: str,
                      metadata_key: str = "json", id_col: str = "id", lat: str = "latitude",
                      lon: str = "longitude", name: str | None = None,
                      shard_size: int = 10_000, dtype: str = "float16",
                      progress: bool = True) -> dict:
    """Import WebDataset tars (paths, globs, brace ranges) into ``out``; see the module's
    docstring for the layout and how a rerun resumes."""
    out = Path(out)
    tars = expand_shards(shards)
    meta = _base_meta(name or embedding_key.removesuffix(".npy"), dtype, shard_size,
                      "webdataset", tars, {"shards": [str(p) for p in tars],
                                           "embedding_key": embedding_key,
                                           "metadata_key": metadata_key,
                                           "fields": {"id": id_col, "latitude": lat,
                                                      "longitude": lon}})
    old_dim = None
    if (out / "store.json").exists():
        old_dim = json.loads((out / "store.json").read_text()).get("dim")
        _write_meta(out, {**meta, "dim": old_dim})  # checks the settings before any work
    k, t0, offset, damaged = _resume_point(out)
    if k:
        log.info("%s: %d shards already done, resuming at %s byte %d", out, k,
                 tars[t0] if t0 < len(tars) else "the end", offset)
    decode = _Decoder(embedding_key, metadata_key, id_col, lat, lon, old_dim)
    # ids must be unique, as in a matrix's table; tars cannot be read ahead for them, so each
    # stored id is checked as it comes (the finished shards' ids first): 5M ids take ~0.5 GB
    seen = set()
    for j in range(k):
        seen.update(pd.read_parquet(shard_paths(out, j)["index"], columns=["id"])["id"])
    sizes = [p.stat().st_size for p in tars]
    bar = tqdm(total=sum(sizes[t0:]) - offset, unit="B", unit_scale=True,
               disable=not progress, desc="import")
    written, pending = [], _skipped([], [], [])
    state = {"meta_written": old_dim is not None}

    def flush(t: int, start: int, end: int, rows: list, skips: list, last: bool,
              damage: str | None) -> None:
        nonlocal k, pending
        skip = pd.concat([pending, _skipped(*zip(*skips, strict=True)) if skips
                          else _skipped([], [], [])], ignore_index=True)
        if decode.dim is None:  # nothing read yet to size a shard: carry the skips on
            pending = skip
            return
        if not state["meta_written"]:
            _write_meta(out, {**meta, "dim": decode.dim})
            state["meta_written"] = True
        _sidecar(out, k).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_sidecar(out, k), json.dumps(
            {"tar": t, "file": str(tars[t]), "start": start, "end": end, "last": last,
             "damage": damage}) + "\n")
        index = pd.DataFrame([{"id": i, "latitude": la, "longitude": lo, **lab}
                              for i, (la, lo, lab, _) in rows],
                             columns=["id", "latitude", "longitude"] if not rows else None)
        x = (torch.from_numpy(np.stack([r[1][3] for r in rows]).astype(np.float32)) if rows
             else torch.zeros(0, decode.dim))
        write_shard(out, k, x.to(getattr(torch, dtype)), index, skip)
        written.append(k)
        pending = _skipped([], [], [])
        k += 1

    started = time.perf_counter()
    try:
        for t in range(t0, len(tars)):
            start = offset if t == t0 else 0
            reader = TarSamples(tars[t], start, wanted={embedding_key, metadata_key})
            rows, skips, n, chunk_start, pos = [], [], 0, start, start
            for s in reader:
                if n == shard_size:  # full, and not the tar's last: another sample follows
                    flush(t, chunk_start, pos, rows, skips, False, None)
                    rows, skips, n, chunk_start = [], [], 0, pos
                sid, got = decode(s, tars[t])
                if isinstance(got, str):
                    skips.append((sid, f"{tars[t]}:{s.key}", got))
                else:
                    if sid in seen:
                        raise InputError(
                            f"{tars[t]}: sample {s.key!r} repeats the id {sid!r} of an earlier "
                            "sample: ids must be unique (are some shards given twice, or is "
                            f"{id_col!r} not unique? name another field with --id-column, "
                            "and another --out)")
                    seen.add(sid)
                    rows.append((sid, got))
                n += 1
                bar.update(s.end - pos)
                pos = s.end
            if reader.damage:
                damaged[str(tars[t])] = reader.damage
                log.warning("%s: %s; the samples before the damage are kept%s", tars[t],
                            reader.damage, f", sample {reader.partial!r} and whatever followed it "
                            "are not" if reader.partial else "")
                if reader.partial:
                    skips.append((reader.partial, f"{tars[t]}:{reader.partial}",
                                  f"damaged tar: {reader.damage}"))
            flush(t, chunk_start, pos, rows, skips, True, reader.damage)
            bar.update(sizes[t] - pos)
    finally:
        bar.close()
    if decode.dim is None:
        raise InputError(f"no sample in {len(tars)} shard(s) has a usable {embedding_key!r} "
                         "entry with a position: nothing to import")
    n_shards = k
    report = finalize(out, n_shards)
    _write_meta(out, {**meta, "dim": decode.dim, "rows": report["images_read"]})
    log.info("imported %d shards in %.1f s", len(written), time.perf_counter() - started)
    return {**report, "finalized": True, "shards_written": written, "dim": decode.dim,
            "backbone": meta["backbone"], "layout": "webdataset", "damaged": damaged}
