"""A feature store's rows, read from its shard files when asked for, never loaded whole.

:class:`StoreFeatures` stands where a ``[n, dim]`` tensor of features would: ``len``,
``shape``, ``dtype`` and indexing (``f[rows]``, ``f[a:b]``) work as on a tensor and return
one, in the store's dtype (float16 by default; the model casts a batch once it is on its
device). Each call reads just the rows it names, with ``os.preadv`` at their offsets inside
the shards' safetensors files (the format is a little-endian u64 header size, a JSON header,
then the raw row-major tensor), coalescing consecutive rows into one read.

Why reads and not ``mmap``: a mapped page that a batch touches is counted in the process's
resident memory until the kernel needs it back, so over an epoch a mapped store shows up in
RSS whole (and in every DDP rank's). Reads go through the page cache, which the kernel
shares between processes and frees on its own; the process keeps only the batch. Cost: one
system call per run of consecutive rows, served from the page cache once the store has been
read (training steps, reads included, are timed in
results/benchmarks/README.md#training-at-scale).

Memory: ``rows`` (8 bytes per row of the view) and nothing else that grows with the store.
Files: one descriptor per shard file and process, shared by all views (OSV-5M's store at
10k rows a shard: about 500).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..files import one_line

#: safetensors dtype -> (numpy dtype to read the bytes as, torch dtype of the result)
_DTYPES = {"F16": (np.float16, torch.float16), "F32": (np.float32, torch.float32),
           "BF16": (np.uint16, torch.bfloat16), "F64": (np.float64, torch.float64)}


def _header(path: Path) -> tuple[int, list[int], str]:
    """``(byte offset of the features, shape, dtype code)`` of one shard file; ValueError
    naming it when it is not a safetensors file with a ``features`` tensor (the header's
    stated size is checked against the file's before anything is read)."""
    try:
        total = os.path.getsize(path)
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > total - 8 or size > 100 << 20:
                raise ValueError(f"a header of {size:,} bytes in a file of {total:,}")
            head = json.loads(fh.read(size))
        t = head["features"]
        return (8 + size + int(t["data_offsets"][0]), [int(s) for s in t["shape"]],
                str(t["dtype"]))
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{path}: not a feature shard hiergeo wrote ({one_line(exc)}); "
                         "extract the store again") from None


_FILES: dict[tuple[int, int], int] = {}  # (device, inode) -> descriptor, for every view


def _open(path: Path, key: tuple[int, int]) -> int:
    """A read-only descriptor of the file ``key`` (its device and inode when the view was
    made), one per file and process, shared by every view (a store of 500 shards read by a
    train and a val view holds 500, not 1,000). A store rewritten at the same path has new
    inodes, so a view made after that reads the new files. Descriptors stay open for the
    process's life; a forked DataLoader worker reuses them safely, since ``preadv`` reads
    at an offset and never moves the file's position."""
    fd = _FILES.get(key)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            os.close(fd)
            raise OSError(f"{path} was replaced after its store was opened; open it again")
        _FILES[key] = fd
    return fd


class StoreFeatures:
    """Feature rows of the shard files ``paths`` (in store order), optionally a subset
    ``rows`` of them (indices into the whole store).

    Args:
        paths: the shards' ``.safetensors`` files, in the order of the store's index.
        rows: which store rows this view holds, in its order (None: all).
    """

    def __init__(self, paths: list[Path], rows: np.ndarray | None = None):
        self.paths = [Path(p) for p in paths]
        self.keys = [(st.st_dev, st.st_ino) for st in (os.stat(p) for p in self.paths)]
        heads = [_header(p) for p in self.paths]
        if not heads:
            raise ValueError("a feature store with no shards")
        dims = {h[1][1] for h in heads}
        codes = {h[2] for h in heads}
        if len(dims) != 1 or len(codes) != 1:
            raise ValueError(f"shards disagree on shape or dtype: dims {dims}, dtypes {codes}")
        (self.dim,), (code,) = dims, codes
        if code not in _DTYPES:
            raise ValueError(f"features stored as {code}; this reader knows {list(_DTYPES)}")
        self._np, self.dtype = _DTYPES[code]
        self.row_bytes = self.dim * np.dtype(self._np).itemsize
        self.offsets = np.array([h[0] for h in heads], np.int64)
        counts = np.array([h[1][0] for h in heads], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # store row of each shard's first
        self.n_store = int(self.starts[-1])
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        if self.rows is not None and len(self.rows) and (
                self.rows.min() < 0 or self.rows.max() >= self.n_store):
            raise IndexError(f"rows outside the store's {self.n_store}")

    # -- the tensor-like surface ------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_store if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    ndim = 2

    def subset(self, rows) -> StoreFeatures:
        """A view of rows ``rows`` of this one (no data is read)."""
        rows = np.asarray(rows, np.int64)
        out = object.__new__(StoreFeatures)
        out.__dict__.update(self.__dict__)
        out.rows = rows if self.rows is None else self.rows[rows]
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)))
        elif isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.asarray(idx, np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        idx = np.where(idx < 0, idx + len(self), idx)
        store_rows = idx if self.rows is None else self.rows[idx]
        return torch.from_numpy(self._read(store_rows)).view(self.dtype)

    def float(self) -> torch.Tensor:
        """Every row as one float32 tensor (loads the view whole: small data only)."""
        return self[:].float()

    # -- reading ----------------------------------------------------------------------------
    def _fd(self, shard: int) -> int:
        return _open(self.paths[shard], self.keys[shard])

    def _read(self, store_rows: np.ndarray) -> np.ndarray:
        """Rows ``store_rows`` as a ``[len, dim]`` array, consecutive rows read at once."""
        n = len(store_rows)
        out = np.empty((n, self.dim), self._np)
        if n == 0:
            return out
        order = np.argsort(store_rows, kind="stable")
        srt = store_rows[order]
        shard = np.searchsorted(self.starts, srt, side="right") - 1
        # a run: consecutive store rows in the same shard
        brk = np.flatnonzero((np.diff(srt) != 1) | (np.diff(shard) != 0)) + 1
        bounds = np.concatenate([[0], brk, [n]])
        buf = np.empty((n, self.dim), self._np)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(shard[a])
            off = int(self.offsets[k] + (srt[a] - self.starts[k]) * self.row_bytes)
            view = memoryview(buf[a:b]).cast("B")
            got = os.preadv(self._fd(k), [view], off)
            if got != len(view):
                raise OSError(f"{self.paths[k]}: short read ({got} of {len(view)} bytes); "
                              "the shard is truncated")
        out[order] = buf
        return out
