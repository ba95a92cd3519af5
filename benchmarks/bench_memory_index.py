"""An exported model with a large retrieval memory: export, load, predict; and OSV-5M's size.

    python benchmarks/bench_memory_index.py --run RUN --store STORE [--queries 20000]
        [--names-json FILE ...] [--scale-json FILE] [--out results/benchmarks/memory_index.json]

``RUN`` is a trained run whose memory is an ``ivfpq`` index (``bench_scale.py --memory`` on
its 2M x 1024 store makes one, at ``/tmp/hiergeo-scale/runs/train-2000000-1024``). Each step
runs in a fresh process, so that its peak resident memory is its own:

- export (``hiergeo.export.from_run`` + ``write``): seconds, peak RSS, the folder's and
  ``memory.faiss``'s size;
- load (``Geolocator.load``, checksums verified): seconds and RSS after the load, with the
  memory and without it (``memory=False``: the model alone), so the memory's share shows;
- predict: ``--queries`` rows of ``STORE`` through ``Geolocator.predict_features`` (the
  memory on), queries/s, and the index's own search rate; RSS after.

Then the projection for OSV-5M's 4.9M x 1024 training images from the measured rates: the
index's size (bytes a row x rows), its build time (from the run's ``metrics.json``:
``memory_index.build_seconds``, scaled by rows x lists: assigning each row to its list costs
rows x nlist x d, and the k-means sample grows with the lists, 39 rows a list, so its cost
grows as nlist^2 x d) and the search time per 100k queries (which grows with the rows scanned:
``nprobe / nlist`` of them). ``--names-json`` folds in the JSON lines of
``benchmarks/names_memory_sweep.py --index ...`` (recall and accuracy against exact on real
signal), ``--scale-json`` the training peaks of ``bench_scale.py --memory``.
``--rerender JSON`` recomputes the projection and the ``.md`` from a saved result (no run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OSV5M_TRAIN = 4_894_685
OSV5M_DIM = 1024


def _rss() -> int:
    """Current resident memory of this process, bytes (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _export_child(run: str, model: str) -> dict:
    from hiergeo import export
    from hiergeo.devices import peak_rss_bytes

    t0 = time.perf_counter()
    # features only: the memory is what is measured (bench_scale's stores have no backbone)
    export.write(export.from_run(run, features_only=True), model, overwrite=True)
    secs = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(model).iterdir() if p.is_file())
    return {"seconds": secs, "peak_rss_bytes": peak_rss_bytes(), "folder_bytes": size,
            "memory_faiss_bytes": (Path(model) / "memory.faiss").stat().st_size
            if (Path(model) / "memory.faiss").exists() else None,
            "memory_safetensors_bytes": (Path(model) / "memory.safetensors").stat().st_size}


def _load_child(model: str, store: str, queries: int, memory: bool,
                nprobe: int | None = None) -> dict:
    import torch

    from hiergeo import Geolocator
    from hiergeo.data.splits import store_features
    from hiergeo.devices import peak_rss_bytes

    before = _rss()
    t0 = time.perf_counter()
    g = Geolocator.load(model, memory=memory)
    if nprobe and g.memory is not None:
        g.memory.index._set_nprobe(nprobe)
    out = {"memory": memory, "load_seconds": time.perf_counter() - t0,
           "rss_before_load_bytes": before, "rss_after_load_bytes": _rss()}
    if queries:
        x = store_features(Path(store), "queries")[:queries].float()
        t0 = time.perf_counter()
        g.predict_features(x)
        secs = time.perf_counter() - t0
        out.update(queries=queries, predict_seconds=secs, queries_per_s=queries / secs,
                   rss_after_predict_bytes=_rss())
        if g.memory is not None:
            q = torch.nn.functional.normalize(x, dim=1)
            t0 = time.perf_counter()
            g.memory.index.search(q, g.memory.k)
            out["index_search_seconds"] = time.perf_counter() - t0
            out["index"] = g.memory.index.describe()
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def _child(args) -> None:
    if args.step == "export":
        fig = _export_child(args.run, args.model)
    else:
        fig = _load_child(args.model, args.store, args.queries, args.step == "load",
                          args.nprobe)
    print(json.dumps(fig))


def _run_child(*extra: str, threads: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *extra], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def projection(run_metrics: dict, load: dict) -> dict:
    """OSV-5M's 4.9M x 1024 from the measured run and load, scanning the same share of the
    lists as the measured search."""
    idx = run_metrics.get("memory_index") or {}
    rows = idx.get("rows") or 1
    from hiergeo.predict.memory_index import ivfpq_params

    searched = load.get("index") or idx
    nlist = ivfpq_params(OSV5M_TRAIN, OSV5M_DIM)["nlist"]
    share = searched.get("nprobe", 32) / searched.get("nlist", 1)
    p = ivfpq_params(OSV5M_TRAIN, OSV5M_DIM, max(1, round(share * nlist)))
    per_row = p["m"] + 8  # codes + the id
    out = {"rows": OSV5M_TRAIN, "dim": OSV5M_DIM, "index": p,
           "index_bytes": OSV5M_TRAIN * per_row,
           "exact_bytes": OSV5M_TRAIN * OSV5M_DIM * 2}
    if idx.get("build_seconds") and idx.get("nlist"):
        # adding: rows x nlist distances; k-means: (39 nlist) x nlist: both grow ~ rows x nlist
        out["build_seconds_estimate"] = (idx["build_seconds"] * OSV5M_TRAIN / rows
                                         * p["nlist"] / idx["nlist"])
    if load.get("index_search_seconds"):
        # rows scanned per query: nprobe / nlist of the rows
        here = load["index_search_seconds"] / load["queries"] * 100_000
        scanned_here = share * rows
        scanned = p["nprobe"] / p["nlist"] * OSV5M_TRAIN
        out["search_seconds_per_100k_queries"] = here * scanned / scanned_here
        out["search_seconds_per_100k_queries_here"] = here
    return out


def markdown(res: dict) -> str:
    g = 2**30
    ex, lm, l0 = res["export"], res["load_memory"], res["load_alone"]
    pr = res["osv5m_projection"]
    idx = lm.get("index", {})
    lines = [
        "# The retrieval memory at scale: an exported model with an ivfpq memory", "",
        f"Machine: {res['machine']}. Command: `{res['command']}`.", "",
        f"Run: `{res['run']}`, memory {idx.get('rows', 0):,} rows x {idx.get('dim')} "
        f"(ivfpq: nlist {idx.get('nlist')}, m {idx.get('m')} bytes a row, nprobe "
        f"{idx.get('nprobe')}).", "",
        "| step | seconds | RSS (GiB) | notes |", "| --- | --- | --- | --- |",
        f"| export | {ex['seconds']:.0f} | peak {ex['peak_rss_bytes'] / g:.2f} | folder "
        f"{ex['folder_bytes'] / g:.2f} GiB, memory.faiss "
        f"{(ex['memory_faiss_bytes'] or 0) / g:.3f} GiB |",
        f"| load, the model alone | {l0['load_seconds']:.1f} | after load "
        f"{l0['rss_after_load_bytes'] / g:.2f} | |",
        f"| load, with the memory | {lm['load_seconds']:.1f} | after load "
        f"{lm['rss_after_load_bytes'] / g:.2f} | the memory's share "
        f"{(lm['rss_after_load_bytes'] - l0['rss_after_load_bytes']) / g:.3f} GiB |",
        f"| predict {lm['queries']:,} queries with the memory | {lm['predict_seconds']:.1f} | "
        f"after {lm['rss_after_predict_bytes'] / g:.2f} | {lm['queries_per_s']:.0f} queries/s; "
        f"the index's search alone {lm['queries'] / lm['index_search_seconds']:.0f} queries/s |",
        f"| predict {l0['queries']:,} queries, the model alone | {l0['predict_seconds']:.1f} | "
        f"after {l0['rss_after_predict_bytes'] / g:.2f} | {l0['queries_per_s']:.0f} queries/s |",
        "", "## Projected for OSV-5M (4.9M x 1024)", "",
        f"- index: nlist {pr['index']['nlist']}, m {pr['index']['m']}: "
        f"{pr['index_bytes'] / g:.2f} GiB on disk and mapped (exact float16: "
        f"{pr['exact_bytes'] / g:.1f} GiB, read whole)",
    ]
    if "build_seconds_estimate" in pr:
        lines.append(f"- build: about {pr['build_seconds_estimate'] / 60:.0f} min on this "
                     "machine (the measured build scaled by rows x lists)")
    if "search_seconds_per_100k_queries" in pr:
        lines.append(f"- search: about {pr['search_seconds_per_100k_queries']:.0f} s per 100k "
                     "queries on this machine (scaled by the rows each query scans)")
    for r in res.get("names", []):
        lines.append(f"- names benchmark: `{json.dumps(r)}`")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--store", help="a store of the run's feature width: the queries")
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--nprobe", type=int, help="lists scanned per query at prediction "
                    "(default: the model's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--names-json", nargs="*", default=[], type=Path)
    ap.add_argument("--scale-json", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rerender", type=Path, help="a saved result: recompute the projection "
                    "and rewrite it and its .md (needs the run's metrics in the JSON)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if args.rerender:
        res = json.loads(args.rerender.read_text())
        res["osv5m_projection"] = projection({"memory_index": res["run_memory_index"]},
                                             res["load_memory"])
        args.rerender.write_text(json.dumps(res, indent=2, default=float) + "\n")
        args.rerender.with_suffix(".md").write_text(markdown(res), encoding="utf-8")
        print(markdown(res))
        return 0
    if not (args.run and args.store):
        ap.error("--run and --store are needed")
    tmp = Path(tempfile.mkdtemp(prefix="hiergeo-memidx-"))
    try:
        model = str(tmp / "model")
        ex = _run_child("--step", "export", "--run", args.run, "--model", model,
                        threads=args.threads)
        print("export:", json.dumps(ex), flush=True)
        common = ("--model", model, "--store", args.store, "--queries", str(args.queries))
        l0 = _run_child("--step", "alone", *common, threads=args.threads)
        print("load, model alone:", json.dumps(l0), flush=True)
        lm = _run_child("--step", "load", *common,
                        *(["--nprobe", str(args.nprobe)] if args.nprobe else []),
                        threads=args.threads)
        print("load, with the memory:", json.dumps(lm), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run_metrics = json.loads((Path(args.run) / "metrics.json").read_text())
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"threads {args.threads}",
           "command": "python benchmarks/bench_memory_index.py " + " ".join(argv or sys.argv[1:]),
           "run": args.run, "run_memory_index": run_metrics.get("memory_index"),
           "export": ex, "load_alone": l0, "load_memory": lm,
           "osv5m_projection": projection(run_metrics, lm),
           "names": [json.loads(line) for f in args.names_json
                     for line in f.read_text().splitlines() if line.startswith("{")]}
    if args.scale_json:
        res["training"] = json.loads(args.scale_json.read_text())
    print(markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
        args.out.with_suffix(".md").write_text(markdown(res), encoding="utf-8")
        print("wrote", args.out, "and", args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
