"""Prediction throughput on photos, end to end: JPEG files -> backbone -> model -> CSV.

    python benchmarks/bench_geolocate.py [--model results/photos/model] [--repeat 3]
        [--workers 0,2] [--batch-size 64] [--out results/benchmarks/geolocate.json]

The model is ``make photos``'s (the embedded backbone, efficientnet_lite0, and a small model
on the shared playset); the photos are the 163 real OSV-5M playset JPEGs, listed ``--repeat``
times (the same files again under other ids: the page cache holds them, the decoding is done each
time), given as a photo table without positions (no truth scoring).
Each setting is one call of :meth:`hiergeo.Geolocator.predict` plus writing the CSV, timed
after a warm-up call on 16 photos. Per stage (:class:`hiergeo.geolocate.Timings`): ``listing``
(finding the photos), ``decode`` (the main process waiting for decoded, preprocessed images and
EXIF positions: all
of the decoding with 0 workers, only what the workers did not hide otherwise), ``backbone``,
``descent`` (head, memory, beam descent), ``table`` (the answer table, truth scoring) and
``csv``. With 0 workers the stages run one after the other, so their shares are where the
time goes; with workers, decoding overlaps the backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
PLAYSET = ROOT.parent / "shared" / "images" / "osv5m_playset"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "results" / "photos" / "model")
    ap.add_argument("--photos", type=Path, default=PLAYSET)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.model / "model.json").exists():
        print(f"error: {args.model}: no exported model; run `make photos` first",
              file=sys.stderr)
        return 2
    files = sorted(args.photos.glob("*.jpg"))
    if not files:
        print(f"error: {args.photos}: no JPEGs", file=sys.stderr)
        return 2
    from hiergeo import Geolocator
    from hiergeo.reports.answers import write_table

    t = time.perf_counter()
    g = Geolocator.load(args.model, device="cpu")
    load_s = time.perf_counter() - t
    g.predict([str(f) for f in files[:16]], progress=False, workers=0)  # first-call costs
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        # a photo table (ids made unique per repeat: a photo named twice is predicted once)
        photos = Path(tmp) / "photos.csv"
        pd.DataFrame({"id": [f"{f.stem}-{r}" for r in range(args.repeat) for f in files],
                      "path": [str(f) for _ in range(args.repeat) for f in files]}).to_csv(
            photos, index=False)
        photos = [photos]
        for w in (int(x) for x in args.workers.split(",")):
            t = time.perf_counter()
            table = g.predict(photos, batch_size=args.batch_size, workers=w, progress=False)
            tc = time.perf_counter()
            write_table(table, Path(tmp) / "p.csv")
            end = time.perf_counter()
            rep = g.timings.report()
            stages = {**rep["stages_s"], "csv": end - tc}
            total = end - t
            runs.append({"workers": w, "batch_size": args.batch_size, "images": rep["images"],
                         "skipped": rep["skipped"], "seconds": total,
                         "images_per_s": rep["images"] / total, "stages_s": stages,
                         "stage_share": {k: v / total for k, v in stages.items()},
                         "unaccounted_s": total - sum(stages.values())})
            print(f"workers {w}: {rep['images']} photos in {total:.1f} s = "
                  f"{rep['images'] / total:.1f} img/s; " + ", ".join(
                      f"{k} {v / total:.0%}" for k, v in stages.items()), flush=True)
    result = {"command": "python benchmarks/bench_geolocate.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpus": len(os.sched_getaffinity(0)), "torch_threads":
                          torch.get_num_threads(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine()},
              "model": str(args.model), "backbone": g.meta["backbone"]["name"],
              "model_load_s": load_s, "photos": f"{len(files)} JPEGs x {args.repeat}",
              "runs": runs}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
