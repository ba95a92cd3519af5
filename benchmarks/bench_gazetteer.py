"""Gazetteer benchmark: build and load times, labelling throughput against reverse_geocoder,
agreement of ``mode="osv5m"`` with it, and how often the three labelling modes disagree.

Usage::

    python benchmarks/bench_gazetteer.py [--n-speed 1000000] [--n-agree 100000]
                                         [--out results/benchmarks]

Prints every figure and writes ``gazetteer.json`` and ``gazetteer_disagreement.csv`` to
``--out`` (columns explained in ``results/README.md``). reverse_geocoder keeps one instance per
process (its mode is fixed by the first call), so each of its runs happens in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import gazetteer
from gazetteer.keys import LEVELS, make_keys

ROOT = Path(__file__).resolve().parents[1]


def sample_points(gz: gazetteer.Gazetteer, n: int, seed: int, spread_deg: float = 0.25):
    """Points scattered around random real places (normal offsets, ``spread_deg`` sd)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(gz.places), n)
    lat = np.clip(gz.places["lat"].to_numpy()[i] + rng.normal(0, spread_deg, n), -89.999, 89.999)
    lon = gz.places["lon"].to_numpy()[i] + rng.normal(0, spread_deg, n)
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def rg_worker(mode: int, path: str) -> None:
    """Subprocess: reverse_geocoder on the points in ``path`` (.npy); writes keys + seconds."""
    import reverse_geocoder as rg

    pts = np.load(path)
    coords = [tuple(p) for p in pts.tolist()]
    rg.search([coords[0]], mode=mode, verbose=False)  # load the table and build the tree
    t = time.perf_counter()
    res = rg.search(coords, mode=mode, verbose=False)
    seconds = time.perf_counter() - t
    df = pd.DataFrame(res)
    keys = make_keys(df["cc"], df["admin1"], df["admin2"], df["name"])
    pd.DataFrame(keys).to_parquet(path + ".keys.parquet")
    Path(path + ".seconds").write_text(str(seconds))


def run_rg(lat, lon, mode: int, workdir: Path) -> tuple[pd.DataFrame, float]:
    path = workdir / f"pts_{mode}_{len(lat)}.npy"
    np.save(path, np.column_stack([lat, lon]))
    subprocess.run([sys.executable, __file__, "--rg-worker", str(mode), str(path)], check=True)
    return (pd.read_parquet(str(path) + ".keys.parquet"),
            float(Path(str(path) + ".seconds").read_text()))


def timed_label(gz, lat, lon, mode):
    """Seconds for a first call (lazy indexes built on the way) and for a second call."""
    t = time.perf_counter()
    gz.label(lat, lon, mode=mode)
    first = time.perf_counter() - t
    t = time.perf_counter()
    gz.label(lat, lon, mode=mode)
    return first, time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-speed", type=int, default=1_000_000)
    ap.add_argument("--n-agree", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--rg-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rg_worker:
        rg_worker(int(args.rg_worker[0]), args.rg_worker[1])
        return {}

    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        gazetteer.build(out=tmp / "gz")
        report["cold_build_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        gz = gazetteer.load(tmp / "gz")
        report["load_s"] = round(time.perf_counter() - t, 3)
        print(f"cold build {report['cold_build_s']} s, load {report['load_s']} s")
        report["counts"] = gz.counts()
        report["coverage"] = gz.meta["coverage"]

        # -- throughput on the same points -------------------------------------------------
        lat, lon = sample_points(gz, args.n_speed, seed=0)
        _, rg1_s = run_rg(lat, lon, 1, tmp)
        thr = {"n_points": args.n_speed, "rg_mode1": args.n_speed / rg1_s}
        for mode in ("osv5m", "nearest-city", "polygon"):
            first, s = timed_label(gz, lat, lon, mode)
            thr[mode] = args.n_speed / s
            thr[f"{mode}_first_call"] = args.n_speed / first
        thr = {k: (round(v) if k != "n_points" else v) for k, v in thr.items()}
        thr["osv5m_vs_rg_mode1"] = round(thr["osv5m"] / thr["rg_mode1"], 2)
        thr["nearest_city_vs_rg_mode1"] = round(thr["nearest-city"] / thr["rg_mode1"], 2)
        report["throughput"] = thr
        print("points/s:", json.dumps(thr))

        # -- agreement with reverse_geocoder's default (multi-process) mode -----------------
        lat, lon = sample_points(gz, args.n_agree, seed=1)
        rg_keys, _ = run_rg(lat, lon, 2, tmp)
        labels = {m: gz.label(lat, lon, mode=m) for m in gazetteer.MODES}
        report["osv5m_agreement"] = {
            lvl: round(float((labels["osv5m"][lvl].to_numpy() == rg_keys[lvl].to_numpy()).mean()),
                       6) for lvl in LEVELS}
        report["osv5m_agreement"]["n_points"] = args.n_agree
        print("osv5m vs reverse_geocoder.search:", json.dumps(report["osv5m_agreement"]))

        # -- how often the modes disagree -----------------------------------------------------
        pairs = [("osv5m", "nearest-city"), ("polygon", "nearest-city"), ("polygon", "osv5m")]
        dis = {}
        for a, b in pairs:
            dis[f"{a}|{b}"] = {lvl: round(float((labels[a][lvl] != labels[b][lvl]).mean()), 5)
                               for lvl in LEVELS}
        report["mode_disagreement"] = dis
        print("mode disagreement:", json.dumps(dis, indent=1))

        ref = labels["nearest-city"]
        rows = pd.DataFrame({"country": ref["country"]})
        for m in ("osv5m", "polygon"):
            for lvl in LEVELS:
                rows[f"{m}_{lvl}_differs"] = (labels[m][lvl] != ref[lvl]).to_numpy()
        table = rows.groupby("country").agg(
            n=("country", "size"), **{c: (c, "mean") for c in rows.columns if c != "country"})
        table = table.sort_values(["polygon_country_differs", "n"], ascending=False)
        table["polygon_country_differs_n"] = (table["polygon_country_differs"]
                                              * table["n"]).round().astype(int)
        table = table.sort_values("polygon_country_differs_n", ascending=False)
        print("\ncountries where polygon and nearest-city disagree most (share of points):")
        print(table.head(15)[["n", "polygon_country_differs", "polygon_region_differs",
                              "osv5m_country_differs", "osv5m_city_differs"]]
              .round(3).to_string())

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gazetteer.json").write_text(json.dumps(report, indent=2) + "\n")
    table.round(4).to_csv(args.out / "gazetteer_disagreement.csv")
    print(f"\nwrote {args.out / 'gazetteer.json'} and gazetteer_disagreement.csv")
    return report


if __name__ == "__main__":
    main()
