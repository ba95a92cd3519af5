"""Memory settings and beam widths on the names benchmark's validation split, for one run.

For each ``K,T`` (``K = 0``: no memory) the run's model is re-calibrated on validation (the
temperatures, then the memory weights, as training does) and the validation split is scored
at each beam width given. Prints one JSON line per setting; nothing is written to the run.

    python benchmarks/names_memory_sweep.py --run results/names/names-poincare \\
        --settings 0,1 20,0.1 20,0.05 50,0.05 --beams 1 5

The runs behind results/benchmarks/README.md#defaults-and-why were rescored this way
(``results/benchmarks/names_tuning.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

COLUMNS = ["acc_country", "acc_region", "acc_subregion", "acc_city", "median_km", "geoscore"]


def main(argv=None) -> int:
    from hiergeo.data.names import names_benchmark
    from hiergeo.data.splits import read_store_split
    from hiergeo.evaluate import build_memory, evaluate_split, load_run
    from hiergeo.predict.calibration import calibrate as _calibrate

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run trained on the names benchmark")
    ap.add_argument("--settings", nargs="+", default=["0,1", "20,0.1", "20,0.05"],
                    help="K,T pairs: memory_k and memory_temperature (K = 0: no memory)")
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 5],
                    help="beam widths to score (the same at every level)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--index", choices=["auto", "exact", "ivfpq"],
                    help="the memory's index (eval.memory_index; default: the run's); with "
                    "ivfpq, also prints its recall@K of the exact neighbours of the validation "
                    "queries and its build time")
    ap.add_argument("--nprobe", type=int, help="eval.memory_nprobe (ivfpq)")
    ap.add_argument("--refine", type=int, help="eval.memory_refine (ivfpq)")
    ap.add_argument("--index-dir", help="a folder where an ivfpq index is kept and found "
                    "again (build_memory's run_dir): several settings, one build")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    cfg, model, hier, gz = load_run(args.run, "cpu")
    cfg.eval.maps = False
    stores = names_benchmark(gz=gz)
    train, _, _ = read_store_split(stores["train"], cfg, gz, "train")
    val, _, _ = read_store_split(stores["val"], cfg, gz, "val")
    if args.index:
        cfg.eval.memory_index = args.index
    if args.nprobe:
        cfg.eval.memory_nprobe = args.nprobe
    if args.refine:
        cfg.eval.memory_refine = args.refine
    t0 = time.perf_counter()
    memory = build_memory(cfg, train, run_dir=args.index_dir)  # k and T set per setting
    built = time.perf_counter() - t0
    if memory is not None and memory.index.kind != "exact":
        from hiergeo.predict.memory_index import ExactIndex

        q = torch.nn.functional.normalize(val.x[:].float(), dim=1)
        k = max(int(s.split(",")[0]) for s in args.settings)
        t0 = time.perf_counter()
        _, approx = memory.index.search(q, k)
        approx_s = time.perf_counter() - t0
        exact = ExactIndex.build(train.x)
        t0 = time.perf_counter()
        _, want = exact.search(q, k)
        exact_s = time.perf_counter() - t0
        del exact
        hit = (approx[:, :, None] == want[:, None, :]).any(2).float().mean().item()
        print(json.dumps({"index": memory.index.describe(), "build_seconds": built,
                          f"recall_at_{k}": hit,
                          "top1_agreement": (approx[:, 0] == want[:, 0]).float().mean().item(),
                          "queries": len(q), "search_seconds": approx_s,
                          "exact_search_seconds": exact_s}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.settings:
            k, t = spec.split(",")
            cfg.eval.memory_k, cfg.eval.memory_temperature = int(k), float(t)
            if memory is not None and int(k) > 0:
                memory.k, memory.temperature = int(k), float(t)
            model.memory_weight.zero_()
            _, nb = _calibrate(model, val, hier, cfg, Path(tmp),
                               memory if int(k) > 0 else None)
            for b in args.beams:
                res = evaluate_split(model, hier, val, cfg, gz, Path(tmp) / "eval",
                                     memory=memory if int(k) > 0 else None, beams=[b] * 4,
                                     neighbours=nb)
                print(json.dumps({
                    "run": args.run, "memory_k": int(k), "memory_temperature": float(t),
                    "index": None if memory is None else memory.index.kind,
                    "beams": b, "memory_weight": model.memory_weight.tolist(),
                    **{c: res[c] for c in COLUMNS},
                    "ece": {lvl: r["ece"] for lvl, r in res["calibration"].items()}}),
                    flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
