"""Feature stores: what ``python -m hiergeo.features`` writes and the trainer reads.

::

    STORE/store.json                    format, backbone, weights (a local file's path and
                                        sha256 too), dim, dtype, data config, shard size,
                                        number of input rows, source
    STORE/shards/shard-00000.safetensors    {"features": [n, dim]} (float16 by default)
    STORE/shards/shard-00000.parquet        the n rows above, in order: id, latitude,
                                            longitude, any OSV-5M label columns
    STORE/shards/shard-00000.skipped.parquet   id, path, reason for the input rows of this
                                            shard that produced no feature
    STORE/index.parquet                 all shards' rows with ``shard`` and ``row``
    STORE/report.json, skipped.csv      counts, and every skipped row with its reason

Shard k holds input rows ``[k * shard_size, (k + 1) * shard_size)``; each shard's three files
are written to temporary names and renamed, features and ids together, so a shard is either
whole or absent and no feature can end up under another image's id.

Every temporary name is unique to its process and call (``NAME.<pid>-<token>.tmp`` beside
``NAME``), so several processes may write one store at once (torchrun ranks, two runs building
the demo store): each rename is atomic and every writer writes the same bytes, so the last
rename wins and readers never see half a file. A writer that fails removes its temporary files;
one killed outright (SIGKILL, power loss) can leave a ``*.tmp`` file, which nothing reads.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..files import atomic_write_text, one_line, temporary_names

FORMAT = 1
#: The most bytes of a store.json read (a crafted one cannot make a read without bound).
META_LIMIT = 16 << 20


class StoreError(ValueError):
    """A feature store that cannot be read; the message names the file."""


def read_index(store: Path, **kw) -> pd.DataFrame:
    """A store's ``index.parquet`` (``pd.read_parquet`` keywords), or :class:`StoreError`
    naming it when it is missing, truncated or not Parquet."""
    path = Path(store) / "index.parquet"
    if not path.is_file():
        raise StoreError(f"{path}: missing; the store's extraction did not finish (run it "
                         "again: it resumes)")
    try:
        return pd.read_parquet(path, **kw)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError
        raise StoreError(f"{path}: cannot read it ({one_line(exc)}); extract the store "
                         "again") from None


def shard_paths(store: Path, k: int) -> dict[str, Path]:
    base = Path(store) / "shards" / f"shard-{k:05d}"
    return {"features": base.with_suffix(".safetensors"), "index": base.with_suffix(".parquet"),
            "skipped": Path(f"{base}.skipped.parquet")}


def shard_done(store: Path, k: int) -> bool:
    return all(p.exists() for p in shard_paths(store, k).values())


def write_shard(store: Path, k: int, features: torch.Tensor, index: pd.DataFrame,
                skipped: pd.DataFrame) -> None:
    from safetensors.torch import save_file

    paths = shard_paths(store, k)
    paths["features"].parent.mkdir(parents=True, exist_ok=True)
    if len(features) != len(index):
        raise ValueError(f"shard {k}: {len(features)} features for {len(index)} rows")
    order = ("features", "index", "skipped")
    with temporary_names(*(paths[n] for n in order)) as tmps:
        tmp = dict(zip(order, tmps, strict=True))
        save_file({"features": features.contiguous()}, str(tmp["features"]))
        index.to_parquet(tmp["index"], index=False)
        skipped.to_parquet(tmp["skipped"], index=False)
        # the skipped file is renamed last: a shard counts as done only when all three exist
        for name in order:
            tmp[name].replace(paths[name])


class FeatureStore:
    """Read a feature store: ``index`` (DataFrame) and ``features()`` (one tensor)."""

    def __init__(self, path: str | Path, *, index: bool = True):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.path}: not a feature store (no store.json)")
        if not meta_path.is_file() or meta_path.stat().st_size > META_LIMIT:
            raise StoreError(f"{meta_path}: not a store.json hiergeo wrote (not a regular "
                             f"file of at most {META_LIMIT:,} bytes)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{meta_path}: not valid JSON ({exc}); extract the store again"
                             ) from None
        if not isinstance(self.meta, dict):
            raise StoreError(f"{meta_path}: not a JSON object")
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: store format {self.meta.get('format')!r}, "
                             f"this hiergeo reads {FORMAT}")
        dim = self.meta.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1 << 20:
            raise StoreError(f"{meta_path}: dim {dim!r} is not a feature dimension")
        self.index = read_index(self.path) if index else None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def features(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All features in index order."""
        from safetensors.torch import load_file

        parts = []
        for k in sorted(self.index["shard"].unique()):
            parts.append(load_file(str(shard_paths(self.path, int(k))["features"]))["features"])
        x = torch.cat(parts) if parts else torch.zeros(0, self.dim)
        return x if dtype is None else x.to(dtype)


def finalize(out: Path, n_shards: int) -> dict:
    """Join the shards' tables into ``index.parquet``, ``skipped.csv`` and ``report.json``.

    Idempotent, and safe when several processes run it at once on finished shards: each
    writes the same files under its own temporary names and renames them, ``index.parquet``
    last (a reader of the store needs it).
    """
    out = Path(out)
    idx, skips = [], []
    for k in range(n_shards):
        p = shard_paths(out, k)
        part = pd.read_parquet(p["index"])
        part["shard"], part["row"] = k, np.arange(len(part))
        idx.append(part)
        skips.append(pd.read_parquet(p["skipped"]))
    index = pd.concat(idx, ignore_index=True)
    skipped = pd.concat(skips, ignore_index=True)
    report = {"images_read": len(index), "skipped": len(skipped),
              "skipped_by_reason": dict(Counter(skipped["reason"]).most_common()),
              "shards": n_shards}
    with temporary_names(out / "skipped.csv", out / "index.parquet") as (tmp_skip, tmp_index):
        skipped.to_csv(tmp_skip, index=False, encoding="utf-8")
        tmp_skip.replace(out / "skipped.csv")
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
        index.to_parquet(tmp_index, index=False)
        tmp_index.replace(out / "index.parquet")
    return report


def write_store(out: str | Path, features: torch.Tensor, table: pd.DataFrame, *,
                backbone: str = "custom", shard_size: int | None = None, **meta) -> Path:
    """Write a whole feature store from features in memory (for your own features).

    Args:
        features: ``[n, dim]`` float tensor (stored in its dtype; float16 halves the size).
        table: ``n`` rows with ``id, latitude, longitude`` and, optionally, OSV-5M's label
            columns (``unique_country`` ... or ``country, region, sub-region, city``).
        backbone: what made the features, for the record.
        meta: more keys for ``store.json``.
    """
    out = Path(out)
    for col in ("id", "latitude", "longitude"):
        if col not in table.columns:
            raise ValueError(f"the table needs an {col!r} column (has {list(table.columns)})")
    if len(features) != len(table):
        raise ValueError(f"{len(features)} feature rows for {len(table)} table rows")
    n = len(table)
    size = shard_size or max(n, 1)
    empty = pd.DataFrame({"id": [], "path": [], "reason": []}, dtype=str)
    starts = range(0, max(n, 1), size)
    for k, s in enumerate(starts):
        write_shard(out, k, features[s:s + size], table.iloc[s:s + size].reset_index(drop=True),
                    empty)
    finalize(out, len(starts))
    info = {"format": FORMAT, "backbone": backbone, "weights": meta.pop("weights", "unknown"),
            "dim": int(features.shape[1]), "dtype": str(features.dtype).replace("torch.", ""),
            "shard_size": size, "rows": n, **meta}
    # last: the store counts as written only now
    atomic_write_text(out / "store.json", json.dumps(info, indent=2, default=str) + "\n")
    return out
