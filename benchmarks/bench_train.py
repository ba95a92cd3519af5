"""Training throughput on cached 512-d features, and the geometry ablation on the demo.

Usage::

    python benchmarks/bench_train.py [--steps 80] [--batch-size 512] [--device auto]
    python benchmarks/bench_train.py --ablation [--geometries poincare,euclidean,sphere]
    python benchmarks/bench_train.py --sweep

Throughput: the demo's 512-d feature store, ``--steps`` training steps per setting (dense and
sparse entity optimiser; on a GPU also the full-table candidates), samples/s taken from the
run's ``log.csv`` after the first logging window (warm-up excluded). Writes
``results/benchmarks/train.json`` (``train_cuda.json`` on a GPU).

Ablation: the demo preset as ``make demo`` runs it (same seed, data, steps), once per
geometry; per-level accuracy and median km. Writes ``results/benchmarks/geometry_ablation.json``
and ``.md``.

Sweep (``--sweep``): the demo figures of results/benchmarks/README.md#defaults-and-why. The demo run
once per setting of the start radius, the sibling margin, the temperature and the entity
learning rate (about 20 minutes on 2 cores), plus what the settings act on: the median angle
between sibling cities seen from the origin, the starting tree's MAP, and the spacing of
sibling centroids per level that sets ``loss.sigma_km``. Writes
``results/benchmarks/defaults_sweep.json`` and ``.md``.
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

from hiergeo.devices import resolve_device
from hiergeo.metrics import markdown_table
from hiergeo.train import load_config, run

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["country", "region", "subregion", "city"]


def machine(device: str) -> dict:
    out = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
           "device": device}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
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


TAU = {t: f"loss.tau=[{t},{t},{t},{t}]" for t in (1.0, 0.5, 0.25)}
#: name -> overrides of the demo preset; "margin full" is the construction's own 1.25
SWEEP = {
    "radius 11.5, tau 1.0, margin full": ["model.radius_budget=11.5", "model.sibling_margin=null",
                                          TAU[1.0]],
    "radius 11.5, tau 0.5, margin full": ["model.radius_budget=11.5", "model.sibling_margin=null",
                                          TAU[0.5]],
    "radius 11.5, tau 0.5, margin full, entity_lr 0.05": [
        "model.radius_budget=11.5", "model.sibling_margin=null", TAU[0.5],
        "optim.entity_lr=0.05"],
    "radius 8, tau 0.25, margin full": ["model.radius_budget=8", "model.sibling_margin=null"],
    "radius 6, tau 0.5, margin full": ["model.radius_budget=6", "model.sibling_margin=null",
                                       TAU[0.5]],
    "radius 6, tau 0.25, margin full": ["model.radius_budget=6", "model.sibling_margin=null"],
    "radius 4, tau 0.25, margin full": ["model.radius_budget=4", "model.sibling_margin=null"],
    "radius 2.5, tau 0.25, margin full": ["model.sibling_margin=null"],
    "radius 2.5, tau 0.25, margin 0.5": ["model.sibling_margin=0.5"],
    "radius 2.5, tau 0.25, margin 0.75 (default)": [],
}


def tree_facts() -> dict:
    """What the swept settings act on, measured on the world tree."""
    import time

    import numpy as np
    from scipy.spatial import cKDTree

    import gazetteer
    from gazetteer.geo import chord_to_km, haversine_km, to_xyz
    from hiergeo.embedding import embed_tree, evaluate_embedding

    gz = gazetteer.load()
    e = gz.entities
    rng = np.random.default_rng(0)
    spacing = {}
    for lvl in LEVELS:
        s = e[e["level"] == lvl]
        xyz = to_xyz(s["lat"].to_numpy(), s["lon"].to_numpy())
        nn = chord_to_km(cKDTree(xyz).query(xyz, k=2)[0][:, 1])
        groups = [g for g in s.groupby("parent_id")["id"].apply(np.asarray) if len(g) > 1]
        pairs = np.array([rng.choice(g, 2, replace=False) for g in groups])
        lat, lon = e["lat"].to_numpy(), e["lon"].to_numpy()
        km = haversine_km(lat[pairs[:, 0]], lon[pairs[:, 0]], lat[pairs[:, 1]], lon[pairs[:, 1]])
        spacing[lvl] = {"nearest_neighbour_km_median": float(np.median(nn)),
                        "sibling_pair_km_median": float(np.median(km))}
    city = e[e["level"] == "city"]
    first_two = [g[:2] for g in city.groupby("parent_id")["id"].apply(np.asarray) if len(g) > 1]
    sib = torch.as_tensor(np.array(first_two))
    trees = {}
    for radius, margin in [(11.5, None), (2.5, None), (2.5, 0.75)]:
        opts = {"radius_budget": radius, **({"margin": margin} if margin else {})}
        t = time.perf_counter()
        emb = embed_tree(gz, dim=16, **opts)
        secs = time.perf_counter() - t
        u = torch.nn.functional.normalize(emb.points, dim=1)
        angle = torch.acos((u[sib[:, 0]] * u[sib[:, 1]]).sum(1).clamp(-1, 1))
        ev = evaluate_embedding(emb, gz, n_map_nodes=1000, n_pairs=20000)
        trees[f"radius {radius}, margin {margin or 'full'}"] = {
            "construct_seconds": secs, "sibling_city_angle_rad_median": float(angle.median()),
            "map": ev["map"], "mean_distortion": ev["mean_distortion"]}
    return {"sibling_spacing": spacing, "starting_tree": trees}


def sweep(args) -> tuple[dict, str]:
    facts = tree_facts()
    print(json.dumps(facts, indent=2), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(SWEEP.items()):
            cfg = load_config("demo", [f"run.out={tmp}", f"run.id=s{i}", "eval.maps=false",
                                       "run.tensorboard=false", f"hardware.device={args.device}",
                                       *overrides])
            m = run(cfg)
            rows.append({"setting": name, **{f"acc_{lvl}": m[f"acc_{lvl}"] for lvl in LEVELS},
                         "median_km": m["median_km"], "train_seconds": m["train_seconds"],
                         "overrides": " ".join(overrides)})
            print(rows[-1], flush=True)
    md = [markdown_table(pd.DataFrame(rows).drop(columns="overrides"), ".4g"),
          markdown_table(pd.DataFrame(facts["starting_tree"]).T.reset_index(names="tree"), ".3g"),
          markdown_table(pd.DataFrame(facts["sibling_spacing"]).T.reset_index(names="level"),
                         ".4g")]
    return {"preset": "demo", "runs": rows, **facts}, "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--geometries", default="poincare,euclidean,sphere")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    device = str(resolve_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        res, md = sweep(args)
        res["machine"] = machine(device)
        (out / "defaults_sweep.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "defaults_sweep.md").write_text(md)
        print(md)
    elif args.ablation:
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
