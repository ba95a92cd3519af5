"""Feature stores: what ``python -m hiergeo.features`` writes and the trainer reads.

::

    STORE/store.json                    format, backbone, weights, dim, dtype, data config,
                                        shard size, number of input rows, source
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
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

FORMAT = 1


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
    tmp = {name: p.with_name(p.name + ".tmp") for name, p in paths.items()}
    save_file({"features": features.contiguous()}, str(tmp["features"]))
    index.to_parquet(tmp["index"], index=False)
    skipped.to_parquet(tmp["skipped"], index=False)
    # the skipped file is renamed last: a shard counts as done only when all three exist
    for name in ("features", "index", "skipped"):
        tmp[name].replace(paths[name])


class FeatureStore:
    """Read a feature store: ``index`` (DataFrame) and ``features()`` (one tensor)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.path}: not a feature store (no store.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: store format {self.meta.get('format')}, "
                             f"this hiergeo reads {FORMAT}")
        self.index = pd.read_parquet(self.path / "index.parquet")

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
