"""Training throughput on cached 512-d features, and the geometry ablation on the demo.

Usage::

    python benchmarks/bench_train.py [--steps 80] [--batch-size 512] [--device auto]
    python benchmarks/bench_train.py --ablation [--geometries poincare,euclidean,sphere]

Throughput: the demo's 512-d feature store, ``--steps`` training steps per setting (dense and
sparse entity optimiser; on a GPU also the full-table candidates), samples/s taken from the
run's ``log.csv`` after the first logging window (warm-up excluded). Writes
``results/benchmarks/train.json`` (``train_cuda.json`` on a GPU).

Ablation: the demo preset as ``make demo`` runs it (same seed, data, steps), once per
geometry; per-level accuracy and median km. Writes ``results/benchmarks/geometry_ablation.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch

from hiergeo.metrics import markdown_table
from hiergeo.train import load_config, run

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["country", "region", "subregion", "city"]


def machine(device: str) -> dict:
    out = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
           "device": device}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def throughput(args, device: str) -> dict:
    settings = [("dense", "auto"), ("sparse", "auto")]
    if device.startswith("cuda"):
        settings += [("dense", "full"), ("dense", "sampled")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for opt, cand in settings:
            cfg = load_config("demo", [
                f"run.out={tmp}", f"run.id={opt}-{cand}", f"optim.max_steps={args.steps}",
                f"optim.batch_size={args.batch_size}", "run.val_every=0", "run.log_every=10",
                "run.checkpoint_every=100000", "eval.maps=false", "run.tensorboard=false",
                f"optim.entity_optimizer={opt}", f"loss.candidates={cand}",
                f"hardware.device={args.device}"])
            run(cfg)
            log = pd.read_csv(Path(tmp) / f"{opt}-{cand}" / "log.csv")
            sps = log["samples_per_s"].dropna().iloc[1:]  # drop the warm-up window
            rows.append({"entity_optimizer": opt, "candidates": cand,
                         "batch_size": args.batch_size, "steps": args.steps,
                         "samples_per_s": float(sps.median()),
                         "samples_per_s_min": float(sps.min()),
                         "samples_per_s_max": float(sps.max())})
            print(rows[-1], flush=True)
    return {"machine": machine(device), "feature_dim": 512, "model_dim": 16,
            "entities": 164986, "runs": rows}


def ablation(args) -> tuple[dict, str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for geo in args.geometries.split(","):
            cfg = load_config("demo", [f"run.out={tmp}", f"run.id={geo}",
                                       f"model.geometry={geo}", "eval.maps=false",
                                       "run.tensorboard=false",
                                       f"hardware.device={args.device}"])
            m = run(cfg)
            rows.append({"geometry": geo,
                         **{f"acc_{lvl}": m[f"acc_{lvl}"] for lvl in LEVELS},
                         **{f"top5_{lvl}": m[f"top5_{lvl}"] for lvl in ("region", "city")},
                         "median_km": m["median_km"], "mean_km": m["mean_km"],
                         "geoscore": m["geoscore"], "train_seconds": m["train_seconds"]})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    return {"preset": "demo", "note": "synthetic demo features; same seed, data and steps",
            "rows": rows}, markdown_table(table, ".4g")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--geometries", default="poincare,euclidean,sphere")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        res, md = ablation(args)
        res["machine"] = machine(device)
        (out / "geometry_ablation.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "geometry_ablation.md").write_text(md)
        print(md)
    else:
        res = throughput(args, device)
        name = "train_cuda.json" if device.startswith("cuda") else "train.json"
        (out / name).write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
