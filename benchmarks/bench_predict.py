"""Beam descent versus flat search on a trained run, full world entity set.

Usage::

    python benchmarks/bench_predict.py [--run results/demo] [--n 1000] [--beams 1,2,3,5,10,20]
        [--device auto]

Queries are the run's validation samples (``--n`` of them). Flat search scores all 164,986
entities per query; descent scores the children of its beams. For each beam width (the same
at every level) the script prints queries/s, entity comparisons per query and city top-1
accuracy, and their ratios to flat search. Writes ``results/benchmarks/predict.json`` and
``predict_curve.md`` (``_cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hiergeo.data.splits import load_data
from hiergeo.evaluate import load_run
from hiergeo.metrics import entity_accuracy, markdown_table
from hiergeo.predict import predict

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "results" / "demo"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--beams", default="1,2,3,5,10,20")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    cfg, model, hier, gz = load_run(args.run, args.device)
    dev = model.entities.device
    val = load_data(cfg, gz).val
    rows = np.arange(min(args.n, len(val)))
    x = val.inputs(rows)
    truth = val.ids[rows].numpy()
    taus = cfg.loss.tau
    # warm-up (lazy allocations, kernels) on a few queries
    predict(model, x[:16], hier, taus, method="descent", beams=[5] * 4)
    flat, t_flat = timed(lambda: predict(model, x, hier, taus, method="flat", topk=5,
                                         batch_size=args.batch_size), dev)
    acc_flat = entity_accuracy(flat.paths, truth)
    res = [{"method": "flat", "beam": None, "queries_per_s": len(rows) / t_flat,
            "comparisons": float(flat.comparisons.mean()), "top1_city": acc_flat["top1_city"],
            "top1_country": acc_flat["top1_country"], "speedup": 1.0, "city_vs_flat": 1.0}]
    print(res[-1], flush=True)
    for b in [int(v) for v in args.beams.split(",")]:
        p, t = timed(lambda b=b: predict(model, x, hier, taus, method="descent", beams=[b] * 4,
                                         topk=5, batch_size=args.batch_size), dev)
        acc = entity_accuracy(p.paths, truth)
        res.append({"method": "descent", "beam": b, "queries_per_s": len(rows) / t,
                    "comparisons": float(p.comparisons.mean()), "top1_city": acc["top1_city"],
                    "top1_country": acc["top1_country"], "speedup": t_flat / t,
                    "city_vs_flat": acc["top1_city"] / max(acc_flat["top1_city"], 1e-12)})
        print(res[-1], flush=True)
    ok = [r for r in res if r["method"] == "descent" and r["speedup"] >= 20
          and r["city_vs_flat"] >= 0.99]
    summary = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "device": str(dev),
                           **({"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda"
                              else {})},
               "run": str(args.run), "queries": len(rows), "entities": int(hier.active.sum()),
               "curve": res,
               "target": "descent >= 20x faster than flat with >= 99% of flat's city top-1",
               "meets_target_at_beams": [r["beam"] for r in ok]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_cuda" if dev.type == "cuda" else ""
    (out / f"predict{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown_table(pd.DataFrame(res), ".4g")
    (out / f"predict_curve{suffix}.md").write_text(md)
    print(md)
    print("meets the target at beam widths:", summary["meets_target_at_beams"] or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
