"""``python -m hiergeo.features``: a folder of photos -> a feature store.

    python -m hiergeo.features --data DATA --out STORE [--backbone efficientnet_lite0-embedded]
        [--weights PATH | --allow-download | --random-weights] [--batch-size 64] [--workers N]
        [--shard-size 10000] [--dtype float16] [--device auto] [--layout auto]

DATA is an OSV-5M CSV (images in ``--image-dir``, default the CSV's folder), a table with
``path, latitude, longitude``, or a folder of photos with EXIF GPS. Rerunning with the same
arguments skips finished shards; a kill loses at most the shard in flight. Every input row
that gives no feature is listed in ``STORE/skipped.csv`` with its reason.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.images import load_image
from .data.records import read_records
from .data.store import FORMAT, finalize, shard_done, write_shard
from .model.backbones import EMBEDDED, create_backbone

log = logging.getLogger(__name__)


class _Images(Dataset):
    """Rows of a record table -> (tensor or None, record row, reason or None)."""

    def __init__(self, records: pd.DataFrame, rows: np.ndarray, transform):
        self.paths = records["path"].to_numpy()
        self.ok_coords = np.isfinite(records["latitude"].to_numpy(float)) & np.isfinite(
            records["longitude"].to_numpy(float))
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        if not self.ok_coords[row]:
            return None, row, "coordinates missing or invalid"
        res = load_image(self.paths[row])
        if not res.ok:
            return None, row, res.reason
        try:
            return self.transform(res.image), row, None
        except Exception as exc:  # a transform failing on an odd image is a skip, not a crash
            return None, row, f"preprocessing failed ({exc})"


def _collate(items):
    good = [(x, r) for x, r, why in items if x is not None]
    bad = [(r, why) for x, r, why in items if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, torch.tensor([g[1] for g in good], dtype=torch.long), bad


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def extract(records: pd.DataFrame, out: str | Path, *, backbone=None, batch_size: int = 64,
            workers: int | None = None, shard_size: int = 10_000, dtype: str = "float16",
            device: str = "auto", source: dict | None = None, progress: bool = True) -> dict:
    """Write features of ``records`` (from :func:`hiergeo.data.read_records`) to ``out``."""
    out = Path(out)
    backbone = backbone or create_backbone(EMBEDDED)
    dev = _device(device)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    meta = {"format": FORMAT, "backbone": backbone.name, "weights": backbone.weights,
            "dim": backbone.dim, "dtype": dtype,
            "data_config": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in backbone.data_config.items()},
            "shard_size": shard_size, "n_records": len(records), "source": source or {}}
    meta_path = out / "store.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        fixed = ("backbone", "weights", "dim", "dtype", "shard_size", "n_records", "data_config")
        diff = [k for k in fixed if old.get(k) != meta[k]]
        if diff:
            raise ValueError(f"{out} holds a store made with other settings ({diff}); "
                             f"choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    tmp = meta_path.with_name("store.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_path)

    # channels_last: faster convolutions for convnets such as the embedded one; harmless
    # for ViTs
    backbone.model.to(dev, memory_format=torch.channels_last).eval()
    transform = backbone.transform()
    out_dtype = getattr(torch, dtype)
    label_cols = [c for c in records.columns if c not in ("path",)]
    n_shards = max(1, -(-len(records) // shard_size))
    todo = [k for k in range(n_shards) if not shard_done(out, k)]
    if len(todo) < n_shards:
        log.info("%s: %d of %d shards already done, resuming", out, n_shards - len(todo), n_shards)
    total_rows = sum(min(shard_size, len(records) - k * shard_size) for k in todo)
    bar = tqdm(total=total_rows, unit="img", desc="features", disable=not progress)
    t0, n_done = time.perf_counter(), 0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    for k in todo:
        rows = np.arange(k * shard_size, min((k + 1) * shard_size, len(records)))
        loader = DataLoader(_Images(records, rows, transform), batch_size=batch_size,
                            num_workers=workers, collate_fn=_collate,
                            pin_memory=dev.type == "cuda")
        feats, kept, skipped = [], [], []
        with torch.inference_mode(), autocast:
            for x, idx, bad in loader:
                skipped.extend(bad)
                if x is not None:
                    x = x.to(dev, non_blocking=True, memory_format=torch.channels_last)
                    f = backbone.features(x)
                    feats.append(f.float().cpu().to(out_dtype))
                    kept.append(idx)
                bar.update(len(idx) + len(bad))
                n_done += len(idx)
                bar.set_postfix(img_s=f"{n_done / (time.perf_counter() - t0):.1f}")
        kept_rows = torch.cat(kept).numpy() if kept else np.zeros(0, dtype=np.int64)
        features = torch.cat(feats) if feats else torch.zeros(0, backbone.dim, dtype=out_dtype)
        index = records.iloc[kept_rows][label_cols].reset_index(drop=True)
        skip = pd.DataFrame({"id": records["id"].to_numpy()[[r for r, _ in skipped]],
                             "path": records["path"].to_numpy()[[r for r, _ in skipped]],
                             "reason": [w for _, w in skipped]}, columns=["id", "path", "reason"])
        write_shard(out, k, features, index, skip)
    bar.close()
    return finalize(out, n_shards)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.features",
                                 description="Extract backbone features into a feature store.")
    ap.add_argument("--data", type=Path, required=True,
                    help="OSV-5M CSV, table with path/latitude/longitude, or folder (EXIF GPS)")
    ap.add_argument("--image-dir", type=Path, default=None, help="OSV-5M images (default: "
                    "the CSV's folder)")
    ap.add_argument("--layout", choices=["auto", "osv5m", "table", "exif"], default="auto")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbone", default=EMBEDDED,
                    help=f"timm model name, or {EMBEDDED} (offline ImageNet weights)")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--weights", type=Path, help="local checkpoint for --backbone")
    w.add_argument("--allow-download", action="store_true",
                   help="fetch timm's pretrained weights from the hub")
    w.add_argument("--random-weights", action="store_true", help="untrained (timing only)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default="float16")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from gazetteer import InputError

    from .model.backbones import WeightsError

    try:
        records = read_records(args.data, args.image_dir, args.layout)
        backbone = create_backbone(args.backbone, weights=args.weights,
                                   allow_download=args.allow_download,
                                   random_weights=args.random_weights)
        report = extract(records, args.out, backbone=backbone, batch_size=args.batch_size,
                         workers=args.workers, shard_size=args.shard_size, dtype=args.dtype,
                         device=args.device, source={"data": str(args.data),
                                                     "layout": args.layout})
    except (InputError, WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
