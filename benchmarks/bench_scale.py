"""Training at OSV-5M's size: does a process's memory stay put as the feature store grows?

    python benchmarks/bench_scale.py [--sizes 200000,2000000] [--steps 40] [--dim 1024]
        [--root /tmp/hiergeo-scale] [--out results/benchmarks/scale.json]
        [--loss-json FILE] [--features-json FILE]

For each size it writes (once, kept under ``--root``) a synthetic feature store of that many
rows of ``--dim`` float16 features, labelled like OSV-5M (``unique_*`` keys of real
gazetteer cities, points scattered around them) plus one small validation store, then trains
the ``osv5m`` preset for ``--steps`` steps in a fresh process and prints, per size:

- peak resident memory of the training process (``ru_maxrss``: the whole run, from reading
  the store to the final evaluation of the small validation store), against the store's size
  on disk; the tree embedding comes from the cache (a first run on a machine computes it
  once, in one process: its peak is measured separately, cache empty);
- setup seconds (labels, the NaN scan, the tree embedding) and seconds per training step
  (median over the logged windows after the first), and the hours one epoch of OSV-5M's
  4.9M training images would take at that speed on this machine;

and checks the issue's two targets: peak RSS on the largest store below its size on disk,
and within 25% of the peak on the smallest. The retrieval memory is off in these runs
(``eval.memory=false``) unless ``--memory`` is given (the presets' default: its index is
exact below ``eval.memory_exact_max_gb``, IVF-PQ above; results/benchmarks/memory_index.md);
each run also reports its peak RSS once each phase (setup, training, calibration with the
memory's build, evaluation) is done.

``--loss-json`` / ``--features-json`` fold the figures of ``bench_loss_memory.py --out`` and
``bench_features.py --world 2`` (its printed JSON) into the same JSON; ``--out X.json`` also
writes ``X.md``. ``--reuse X.json`` takes the training rows from an earlier run of this script
instead of training again (to fold in other figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

OSV5M_TRAIN = 4_894_685  # OSV-5M's training images


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _labels(gz, n: int, rng) -> pd.DataFrame:
    """``n`` points scattered (about 5 km) around random cities, with OSV-5M's key columns."""
    from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS

    e = gz.entities
    parent = e["parent_id"].to_numpy(np.int64)
    keys = e["key"].to_numpy(object)
    cities = np.flatnonzero(e["depth"].to_numpy() == len(LEVELS))  # depth 0: the root
    pick = cities[rng.integers(0, len(cities), n)]
    chain = [pick]
    for _ in range(len(LEVELS) - 1):
        chain.append(parent[chain[-1]])
    chain = chain[::-1]  # country first
    lat = e["lat"].to_numpy(float)[pick] + rng.normal(0, 0.05, n)
    lon = e["lon"].to_numpy(float)[pick] + rng.normal(0, 0.05, n)
    df = pd.DataFrame({"id": [f"s{i:08d}" for i in range(n)],
                       "latitude": np.clip(lat, -89.9, 89.9),
                       "longitude": (lon + 180) % 360 - 180})
    for lvl, ids in zip(LEVELS, chain, strict=True):
        df[OSV5M_KEY_COLUMNS[lvl]] = keys[ids]
    return df


def write_synthetic_store(out: Path, n: int, dim: int, gz, seed: int = 0,
                          shard_size: int = 100_000) -> Path:
    """A feature store of ``n`` random float16 rows, written a shard at a time (the writer
    never holds more than one shard)."""
    from hiergeo.data.store import FORMAT, finalize, shard_done, write_shard

    if (out / "store.json").exists():
        return out
    rng = np.random.default_rng([seed, n])
    empty = pd.DataFrame({"id": [], "path": [], "reason": []}, dtype=str)
    n_shards = -(-n // shard_size)
    for k in range(n_shards):
        m = min(shard_size, n - k * shard_size)
        if shard_done(out, k):
            continue
        table = _labels(gz, m, rng)
        table["id"] = [f"s{k * shard_size + i:08d}" for i in range(m)]
        x = torch.from_numpy(rng.standard_normal((m, dim), dtype=np.float32)).half()
        write_shard(out, k, x, table, empty)
        print(f"  {out.name}: shard {k + 1}/{n_shards}", end="\r", flush=True)
    finalize(out, n_shards)
    meta = {"format": FORMAT, "backbone": "synthetic-scale", "weights": "none", "dim": dim,
            "dtype": "float16", "shard_size": shard_size, "rows": n,
            "source": "benchmarks/bench_scale.py"}
    (out / "store.json").write_text(json.dumps(meta, indent=2) + "\n")
    print()
    return out


def _embed_child(args) -> None:
    """The osv5m preset's tree embedding into an empty cache; prints its peak RSS."""
    import tempfile

    import gazetteer
    from hiergeo.model.build import tree_embedding
    from hiergeo.train import load_config

    gz = gazetteer.load()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HIERGEO_CACHE"] = tmp
        t0 = time.perf_counter()
        tree_embedding(load_config("osv5m"), gz)
        secs = time.perf_counter() - t0
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "rss_before_bytes": before, "seconds": secs,
                      "entities": len(gz.entities)}))


def embedding_figures(threads: int) -> dict:
    """Peak memory and time of the first embedding of the tree on a machine (cache empty)."""
    r = subprocess.run([sys.executable, __file__, "--embed-child"], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    fig = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"tree embedding, osv5m preset, empty cache: peak RSS "
          f"{fig['peak_rss_bytes'] / 2**30:.2f} GiB, {fig['seconds']:.0f} s", flush=True)
    return fig


def _child(args) -> None:
    """One training run; prints its figures as JSON on the last line."""
    from hiergeo.train import load_config, run

    t0 = time.perf_counter()
    cfg = load_config("osv5m", [
        f"data.train={args.store}", f"data.val={args.val}", f"data.feature_dim={args.dim}",
        f"run.out={args.runs}", f"run.id={Path(args.store).name}", "run.overwrite=true",
        f"optim.max_steps={args.steps}", "run.val_every=0", "run.log_every=5",
        "run.checkpoint_every=100000", "run.tensorboard=false",
        f"eval.memory={'true' if args.memory else 'false'}",
        "eval.maps=false", f"hardware.threads={args.threads}", *args.override])
    res = run(cfg)
    log = pd.read_csv(Path(args.runs) / Path(args.store).name / "log.csv")
    sps = log["samples_per_s"].to_numpy()[1:]  # the first window holds the warm-up
    step_s = cfg.optim.batch_size / float(np.median(sps)) if len(sps) else float("nan")
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "seconds": time.perf_counter() - t0, "steps": res["steps"],
                      "train_seconds": res["train_seconds"], "seconds_per_step": step_s,
                      "batch_size": cfg.optim.batch_size, "memory": args.memory,
                      "overrides": args.override,
                      "peak_rss_bytes_by_phase": res.get("peak_rss_bytes", {})}))


def _train_sizes(args) -> list[dict] | None:
    """Write the stores, train on each in a fresh process, print and return the figures."""
    import gazetteer

    gz = gazetteer.load()
    args.root.mkdir(parents=True, exist_ok=True)
    val = write_synthetic_store(args.root / f"val-{args.dim}", 2000, args.dim, gz, seed=1)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        store = write_synthetic_store(args.root / f"train-{n}-{args.dim}", n, args.dim, gz)
        disk = _du(store)
        cmd = [sys.executable, __file__, "--child", "--store", str(store), "--val", str(val),
               "--runs", str(args.root / "runs"), "--dim", str(args.dim), "--steps",
               str(args.steps), "--threads", str(args.threads),
               *(["--memory"] if args.memory else []),
               *(a for o in args.override for a in ("--override", o))]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return None
        fig = json.loads(r.stdout.strip().splitlines()[-1])
        fig.update(rows=n, store_bytes=disk,
                   osv5m_epoch_hours=OSV5M_TRAIN / fig["batch_size"] * fig["seconds_per_step"]
                   / 3600)
        rows.append(fig)
        phases = "  ".join(f"{k} {v / 2**30:.2f}" for k, v in
                           fig["peak_rss_bytes_by_phase"].items())
        print(f"  peak RSS (GiB) once each phase is done: {phases}", flush=True)
        print(f"{n:>10,} rows  store {disk / 2**30:6.2f} GiB  peak RSS "
              f"{fig['peak_rss_bytes'] / 2**30:5.2f} GiB  setup+train+eval {fig['seconds']:6.0f} s"
              f"  {fig['seconds_per_step']:.2f} s/step (batch {fig['batch_size']})  "
              f"OSV-5M epoch {fig['osv5m_epoch_hours']:.1f} h here", flush=True)
    return rows


def markdown(out: dict) -> str:
    """The JSON's figures as the tables of ``results/benchmarks/scale.md``."""
    g = 2**30
    lines = ["# Scale: memory and time against the store's size", "",
             f"Machine: {out['machine']}. Command: `{out['command']}`.", "",
             "Synthetic stores (random float16 features, points scattered around random "
             "gazetteer cities, OSV-5M's key columns): they measure memory and time, not "
             "accuracy. The retrieval memory is off (`eval.memory=false`).", "",
             "| rows | store on disk | peak RSS (whole run) | s / step | batch | "
             "OSV-5M epoch, hours here |", "| --- | --- | --- | --- | --- | --- |"]
    for r in out["training"]:
        lines.append(f"| {r['rows']:,} | {r['store_bytes'] / g:.2f} GiB | "
                     f"{r['peak_rss_bytes'] / g:.2f} GiB | {r['seconds_per_step']:.2f} | "
                     f"{r['batch_size']} | {r['osv5m_epoch_hours']:.1f} |")
    lines += ["", f"Targets: {out['targets']}", "",
              "The training runs read the tree embedding from the cache (one process per "
              "machine writes it, once). Its first computation, in that process:", ""]
    emb = out.get("tree_embedding")
    if emb:
        lines += [f"- tree embedding, `osv5m` preset ({emb['entities']:,} entities), empty "
                  f"cache: peak RSS {emb['peak_rss_bytes'] / g:.2f} GiB "
                  f"({emb['rss_before_bytes'] / g:.2f} before), {emb['seconds']:.0f} s", ""]
    loss = out.get("loss_memory")
    if loss:
        lines += ["## Loss memory (one level, forward + backward)", "",
                  f"Machine: {loss.get('machine', '?')}.", "",
                  "| batch | entities | mode | block | peak | s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in loss["rows"]:
            peak = (f"{r['peak_gb']:.3f} GB" if r.get("peak_gb") is not None
                    else f"skipped (predicted {r.get('predicted_gb', 0):.1f} GB)")
            secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else ""
            lines.append(f"| {r['batch']} | {r['n']:,} | {r['mode']} | "
                         f"{r.get('block') or ''} | {peak} | {secs} |")
        lines.append("")
    ext = out.get("extraction")
    if ext:
        lines += ["## Extraction: one process against several", "",
                  f"{ext['n_images']} photos ({ext['data']}), shard size {ext['shard_size']}, "
                  f"batch {ext['batch_size']}; load average before {ext['load_avg_before']}.", "",
                  "| processes | wall s | CPU s (all) | images/s |", "| --- | --- | --- | --- |"]
        for r in ext["runs"].values():
            lines.append(f"| {r['processes']} | {r['wall_s']} | {r['cpu_s']} | "
                         f"{r['images_per_s']} |")
        lines += ["", f"Stores match: {ext['comparison']}; speed-up {ext['speedup']}, "
                  f"CPU ratio {ext['cpu_ratio']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,2000000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/hiergeo-scale"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--loss-json", type=Path, default=None)
    ap.add_argument("--features-json", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, default=None)
    ap.add_argument("--memory", action="store_true",
                    help="train with the retrieval memory on, as the presets ship it "
                    "(eval.memory=true; off by default here)")
    ap.add_argument("--override", action="append", default=[],
                    help="a config override for the training runs (repeatable)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--embed-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if args.embed_child:
        _embed_child(args)
        return 0
    if args.reuse is not None:
        prev = json.loads(args.reuse.read_text())
        rows, machine, command = prev["training"], prev["machine"], prev["command"]
    else:
        rows, machine = _train_sizes(args), (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, threads {args.threads}")
        command = "python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:])
    if rows is None:
        return 1
    big, small = rows[-1], rows[0]
    checks = {"peak_below_store_size": big["peak_rss_bytes"] < big["store_bytes"],
              "peak_within_25pct_of_smallest": big["peak_rss_bytes"]
              <= 1.25 * small["peak_rss_bytes"]}
    print("targets:", checks)
    out = {"machine": machine, "command": command, "training": rows, "targets": checks,
           "tree_embedding": embedding_figures(args.threads)}
    for key, path in (("loss_memory", args.loss_json), ("extraction", args.features_json)):
        if path is not None:
            out[key] = json.loads(path.read_text())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(out), encoding="utf-8")
        print("wrote", args.out, "and", args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
