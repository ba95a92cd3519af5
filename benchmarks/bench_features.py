"""Feature-extraction speed: images/s end to end, and which stage bounds it.

Usage::

    python benchmarks/bench_features.py [--n 256] [--batch-size 64] [--workers 2]
        [--backbone efficientnet_lite0-embedded] [--random-weights] [--device auto]
        [--out results/benchmarks]

Makes ``--n`` 640x480 JPEGs from scikit-image's sample photos (random crops, so they compress
like photos), then times three things on the same files: decoding + preprocessing alone
(DataLoader, no model), the model alone on ready tensors, and ``hiergeo.features.extract``
end to end. On a GPU the model runs under bf16 autocast. Writes ``features.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hiergeo.features import _collate, _device, _Images, extract
from hiergeo.model import EMBEDDED, create_backbone

ROOT = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    import skimage.data as d

    sources = [Image.fromarray(getattr(d, k)()).convert("RGB")
               for k in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((640, 480))
        p = folder / f"{i:05d}.jpg"
        img.save(p, quality=90)
        rows.append((str(i), str(p), 0.0, 0.0))
    return pd.DataFrame(rows, columns=["id", "path", "latitude", "longitude"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--backbone", default=EMBEDDED)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    args = ap.parse_args(argv)
    dev = _device(args.device)
    bb = create_backbone(args.backbone, random_weights=args.random_weights)
    bb.model.to(dev, memory_format=torch.channels_last).eval()
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "device": str(dev), "gpu": torch.cuda.get_device_name(dev)
                          if dev.type == "cuda" else None},
              "backbone": args.backbone, "input_size": list(bb.data_config["input_size"]),
              "n_images": args.n, "batch_size": args.batch_size, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        records = make_photos(Path(tmp), args.n)
        ds = _Images(records, np.arange(len(records)), bb.transform())
        t = time.perf_counter()
        for _ in DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                            collate_fn=_collate):
            pass
        report["decode_images_per_s"] = round(args.n / (time.perf_counter() - t), 1)

        x = torch.randn(args.batch_size, *bb.data_config["input_size"], device=dev)
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        with torch.inference_mode(), autocast:
            bb.features(x)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            reps = max(1, args.n // args.batch_size)
            t = time.perf_counter()
            for _ in range(reps):
                bb.features(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            report["model_images_per_s"] = round(reps * args.batch_size
                                                 / (time.perf_counter() - t), 1)
        t = time.perf_counter()
        extract(records, Path(tmp) / "store", backbone=bb, batch_size=args.batch_size,
                workers=args.workers, device=args.device, progress=False)
        report["end_to_end_images_per_s"] = round(args.n / (time.perf_counter() - t), 1)
    stages = {"decode": report["decode_images_per_s"], "model": report["model_images_per_s"]}
    report["bound_by"] = min(stages, key=stages.get)
    print(json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "features.json" if dev.type == "cpu" else f"features_{dev.type}.json"
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
