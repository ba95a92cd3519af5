"""Geometry x dimension sweep of the model alone (no retrieval memory) on the names benchmark.

Usage::

    python benchmarks/bench_geometry.py [--geometries poincare,lorentz,euclidean,sphere]
        [--dims 2,4,8,16,32,64,128] [--seeds 0] [--seeds-at-shipped 0,1,2]
        [--override key=value ...] [--epochs E] [--jobs N] [--threads T]
        [--device cpu|cuda] [--timeout S] [--split val|test] [--out DIR] [--runs DIR]

One ``--config default`` run per (geometry, dimension, seed), everything else the shipped
defaults but ``eval.memory=false`` (descent by the model alone, calibrated on validation as
usual), on the names benchmark's stores (:mod:`hiergeo.data.names`). ``--seeds-at-shipped``
adds seeds at the shipped dimension (``model.dim`` of the ``default`` preset) to measure
run-to-run noise. Runs go ``--jobs`` at a time, each a separate process with
``hardware.threads=T`` (``--device cuda``: every job on the one GPU); a run past ``--timeout``
seconds is stopped and recorded with its error, as is a run that fails, and the sweep goes on.
Each finished row is written at once to ``OUT/geometry_sweep.json`` (a killed sweep keeps its
rows; a second sweep into the same folder adds to them, a row of the same run replacing the
old one); at the end ``geometry_sweep.md`` (the table, the seed spread) and
``geometry_sweep.png`` (accuracy per level, median km and GeoScore against dimension, one line
per geometry).

Scored on the validation split unless ``--split test`` is given: the sweep chooses defaults,
and the test split is for the published table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVEL_COLUMNS = ["acc_country", "acc_region", "acc_subregion", "acc_city"]
COLUMNS = [*LEVEL_COLUMNS, "median_km", "mean_km", "geoscore"]
KEY = ("geometry", "dim", "seed", "tag")

log = logging.getLogger("bench_geometry")


# -- rows: merging, summarising (no torch: cheap to test) -------------------------------------
def row_key(row: dict) -> tuple:
    return tuple(row.get(k, "") for k in KEY)


def merge_rows(rows: list[dict], new: dict) -> list[dict]:
    """``rows`` with ``new`` in place of the row of the same run (geometry, dim, seed, tag),
    or appended; order kept."""
    out, done = [], False
    for r in rows:
        if row_key(r) == row_key(new):
            out.append(new)
            done = True
        else:
            out.append(r)
    return out if done else [*out, new]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (tag, geometry, dim): the mean of each column over the seeds that finished, the
    number of seeds, and (two seeds or more) each column's standard deviation and range."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("error"):
            continue
        groups.setdefault((r.get("tag", ""), r["geometry"], r["dim"]), []).append(r)
    out = []
    for (tag, geom, dim), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                       kv[0][2])):
        s = {"tag": tag, "geometry": geom, "dim": dim, "seeds": len(rs)}
        for c in COLUMNS:
            vals = [float(r[c]) for r in rs if r.get(c) is not None]
            if not vals:
                continue
            s[c] = statistics.fmean(vals)
            if len(vals) > 1:
                s[f"{c}_sd"] = statistics.stdev(vals)
                s[f"{c}_range"] = max(vals) - min(vals)
        out.append(s)
    return out


def plan(geometries: list[str], dims: list[int], seeds: list[int], extra_seeds: list[int],
         shipped: int) -> list[tuple[str, int, int]]:
    """The runs, the shipped dimension's first (so a sweep cut short has the comparison
    that matters), each (geometry, dim, seed) once."""
    runs = [(g, shipped, s) for s in sorted(set(seeds) | set(extra_seeds)) for g in geometries
            if shipped in dims or s in extra_seeds]
    runs += [(g, d, s) for d in dims for g in geometries for s in seeds if d != shipped]
    seen, out = set(), []
    for r in runs:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def write_json(path: Path, rows: list[dict], meta: dict) -> None:
    from hiergeo.files import atomic_write_text

    atomic_write_text(path, json.dumps({**meta, "rows": rows}, indent=2, default=float) + "\n")


def markdown(rows: list[dict], meta: dict) -> str:
    summ = summarise(rows)

    def fmt(v, c):
        if v is None:
            return ""
        return f"{v:.0f}" if c in ("median_km", "mean_km", "geoscore") else f"{v:.4f}"

    head = ["tag", "geometry", "dim", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in summ:
        cells = [s["tag"] or "-", s["geometry"], str(s["dim"]), str(s["seeds"])]
        for c in COLUMNS:
            v = fmt(s.get(c), c)
            if f"{c}_sd" in s:
                v += f" ± {fmt(s[f'{c}_sd'], c)}"
            cells.append(v)
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r.get("error")]
    text = (f"Geometry x dimension sweep of the model alone (no memory), names benchmark, "
            f"{meta['split']} split; mean over the seeds that finished ± their standard "
            f"deviation where there are several.\n\nCommand: `{meta['command']}`\n\n"
            f"Machine: {meta['machine']}\n\n" + "\n".join(lines) + "\n")
    if errors:
        text += "\nRuns that did not finish:\n\n" + "".join(
            f"- {r['geometry']} dim {r['dim']} seed {r['seed']}: {r['error']}\n"
            for r in errors)
    return text


def plot(rows: list[dict], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarise(rows)
    cols = [*LEVEL_COLUMNS, "median_km", "geoscore"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, c in zip(axes.flat, cols, strict=True):
        for key in sorted({(s["tag"], s["geometry"]) for s in summ}):
            pts = sorted((s["dim"], s.get(c), s.get(f"{c}_sd", 0.0)) for s in summ
                         if (s["tag"], s["geometry"]) == key and s.get(c) is not None)
            if not pts:
                continue
            d, v, e = zip(*pts, strict=True)
            label = key[1] + (f" {key[0]}" if key[0] else "")
            ax.errorbar(d, v, yerr=e, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dimension")
        ax.set_title(c.replace("acc_", "accuracy, ").replace("_", " "))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"names benchmark, {split} split: the model alone (no memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- one run (a worker process) --------------------------------------------------------------
def one_run(spec: dict) -> dict:
    """Train one run and score it; returns its row."""
    import torch

    import gazetteer
    from hiergeo.data.splits import read_store_split
    from hiergeo.evaluate import evaluate_split, load_run
    from hiergeo.train import load_config, run

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    stores, out = spec["stores"], Path(spec["runs"])
    rid = spec["run_id"]
    ov = [f"data.train={stores['train']}", f"data.val={stores['val']}", f"run.out={out}",
          f"run.id={rid}", "run.overwrite=true", "run.tensorboard=false", "eval.maps=false",
          "eval.memory=false", f"model.geometry={spec['geometry']}",
          f"model.dim={spec['dim']}", f"run.seed={spec['seed']}",
          f"hardware.device={spec['device']}", *spec["overrides"]]
    if spec["threads"]:
        ov.append(f"hardware.threads={spec['threads']}")
    if spec.get("epochs") is not None:
        ov.append(f"optim.epochs={spec['epochs']}")
    cfg = load_config("default", ov)
    t0 = time.perf_counter()
    res = run(cfg)
    secs = time.perf_counter() - t0
    if spec["split"] == "test":
        cfg, model, hier, gz = load_run(out / rid)
        target, _, _ = read_store_split(stores["test"], cfg, gz, "test")
        res = evaluate_split(model, hier, target, cfg, gazetteer.load(), out / rid / "test",
                             method="descent", memory=None)
    row = {k: res[k] for k in COLUMNS}
    cal = res.get("calibration") or {}
    row.update({f"ece_{lvl}": cal[lvl]["ece"] for lvl in cal if "ece" in cal[lvl]})
    row["train_seconds"] = res.get("train_seconds", secs)
    row["seconds"] = secs
    return row


# -- the sweep --------------------------------------------------------------------------------
def _machine(device: str) -> str:
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if device == "cuda":
        try:
            import torch

            text += f", {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        except Exception:  # noqa: BLE001 - a description only
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometries", default="poincare,lorentz,euclidean,sphere")
    ap.add_argument("--dims", default="2,4,8,16,32,64,128")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--seeds-at-shipped", default="", help="more seeds at the shipped dim")
    ap.add_argument("--override", action="append", default=[],
                    help="applied to every run (key=value)")
    ap.add_argument("--tag", default="", help="names this sweep's rows apart (with --override)")
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--runs", default=str(ROOT / "results" / "geometry_sweep"))
    ap.add_argument("--shipped-dim", type=int, default=None,
                    help="the dimension --seeds-at-shipped runs at (default: the default "
                    "preset's model.dim)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        row = one_run(spec)
        Path(spec["row_file"]).write_text(json.dumps(row, default=float))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.override and not args.tag:
        ap.error("--override needs a --tag, so that its rows do not replace the defaults'")
    geometries = [g for g in args.geometries.split(",") if g]
    dims = [int(d) for d in args.dims.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [int(s) for s in args.seeds_at_shipped.split(",") if s]

    import gazetteer
    from hiergeo.config import load_config
    from hiergeo.data.names import names_benchmark

    shipped = args.shipped_dim or load_config("default").model.dim
    for g in geometries:  # a bad name fails here, not in every worker
        load_config("default", [f"model.geometry={g}", *args.override])
    stores = {k: str(v) for k, v in names_benchmark(gz=gazetteer.load()).items()}
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    path = out / "geometry_sweep.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    meta = {"split": args.split,
            "command": " ".join(["python benchmarks/bench_geometry.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "machine": _machine(args.device)}
    todo = plan(geometries, dims, seeds, extra, shipped)
    log.info("%d runs, %d at a time, on %s", len(todo), args.jobs, args.device)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    running: dict = {}  # pid -> (Popen, row base, row file, started)
    t_start = time.perf_counter()
    while todo or running:
        while todo and len(running) < args.jobs:
            geom, dim, seed = todo.pop(0)
            rid = f"geom-{geom}-d{dim}-s{seed}{args.tag}"
            spec = {"geometry": geom, "dim": dim, "seed": seed, "overrides": args.override,
                    "epochs": args.epochs, "threads": args.threads, "device": args.device,
                    "split": args.split, "stores": stores, "runs": str(runs), "run_id": rid,
                    "row_file": str(runs / f"{rid}.row.json")}
            spec_file = runs / f"{rid}.spec.json"
            spec_file.write_text(json.dumps(spec))
            Path(spec["row_file"]).unlink(missing_ok=True)
            logf = open(runs / f"{rid}.log", "w")  # noqa: SIM115 - closed with the process
            p = subprocess.Popen([sys.executable, __file__, "--worker", str(spec_file)],
                                 stdout=logf, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
            base = {"geometry": geom, "dim": dim, "seed": seed, "tag": args.tag,
                    "split": args.split, "overrides": " ".join(args.override),
                    "epochs": args.epochs}
            running[p.pid] = (p, base, Path(spec["row_file"]), time.perf_counter(), logf)
        time.sleep(1.0)
        for pid in list(running):
            p, base, row_file, t0, logf = running[pid]
            late = time.perf_counter() - t0 > args.timeout
            if p.poll() is None and not late:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            logf.close()
            del running[pid]
            if row_file.exists():
                row = {**base, **json.loads(row_file.read_text())}
            else:
                tail = (runs / f"{base_id(base, args.tag)}.log").read_text(
                    errors="replace").strip().splitlines()[-3:]
                why = (f"stopped after {args.timeout:.0f} s" if late
                       else f"exit {p.returncode}: " + " / ".join(tail)[-300:])
                row = {**base, "error": why}
            rows = merge_rows(rows, row)
            write_json(path, rows, meta)
            log.info("%s dim %d seed %d: %s (%d left, %.0f s in)", base["geometry"],
                     base["dim"], base["seed"], row.get("error") or
                     f"geoscore {row['geoscore']:.0f}, subregion {row['acc_subregion']:.4f}",
                     len(todo) + len(running), time.perf_counter() - t_start)
    (out / "geometry_sweep.md").write_text(markdown(rows, meta))
    plot(rows, out / "geometry_sweep.png", args.split)
    done = [r for r in rows if not r.get("error")]
    print(f"geometry sweep: {len(done)} runs scored, {len(rows) - len(done)} failed, in "
          f"{time.perf_counter() - t_start:.0f} s; table {out / 'geometry_sweep.md'}, plot "
          f"{out / 'geometry_sweep.png'}, rows {path}")
    return 0


def base_id(base: dict, tag: str) -> str:
    return f"geom-{base['geometry']}-d{base['dim']}-s{base['seed']}{tag}"


if __name__ == "__main__":
    raise SystemExit(main())
