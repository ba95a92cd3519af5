"""Prediction throughput on photos, end to end: JPEG files -> backbone -> model -> CSV.

    python benchmarks/bench_geolocate.py [--model results/photos/model] [--repeat 3]
        [--workers 0,2] [--batch-size 64] [--out results/benchmarks/geolocate.json]

The model is ``make photos``'s (the embedded backbone, efficientnet_lite0, and a small model
on the shared playset, without a retrieval memory); the photos are the 163 real OSV-5M
playset JPEGs, copied ``--repeat`` times (the page cache holds them; the
decoding is done each time), given as a photo table without positions
(no truth scoring). Each setting is one :func:`hiergeo.geolocate.predict_to_files` call (what
``python -m hiergeo.predict`` runs: parts saved as they are done, joined, written to CSV),
timed after a warm-up call on 16 photos. Per stage (:class:`hiergeo.geolocate.Timings`):
``listing`` (finding the photos), ``decode`` (the main process waiting for decoded,
preprocessed images and EXIF positions: all of the decoding with 0 workers, only what the
workers did not hide otherwise), ``backbone``, ``descent`` (head, beam descent), ``table``
(answer tables, parts, joining, the CSV). With 0 workers the stages run one after the other,
so their shares are where the time goes; with workers, decoding overlaps the backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
    from hiergeo.geolocate import predict_to_files

    t = time.perf_counter()
    g = Geolocator.load(args.model, device="cpu")
    load_s = time.perf_counter() - t
    g.predict([str(f) for f in files[:16]], progress=False, workers=0)  # first-call costs
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        # copies (a file named twice is predicted once), listed in a photo table
        paths = []
        for r in range(args.repeat):
            (Path(tmp) / str(r)).mkdir()
            for f in files:
                paths.append(Path(tmp) / str(r) / f.name)
                shutil.copyfile(f, paths[-1])
        photos = Path(tmp) / "photos.csv"
        pd.DataFrame({"path": [str(q) for q in paths]}).to_csv(photos, index=False)
        photos = [photos]
        for w in (int(x) for x in args.workers.split(",")):
            t = time.perf_counter()
            predict_to_files(g, photos, [Path(tmp) / f"p{w}.csv"], batch_size=args.batch_size,
                             workers=w, progress=False)
            total = time.perf_counter() - t
            rep = g.timings.report()
            stages = rep["stages_s"]
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
