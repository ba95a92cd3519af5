"""Construction versus optimisation (Nickel & Kiela) on the world tree, dims 2, 8, 16, 32.

Usage::

    python benchmarks/bench_embedding.py [--dims 2 8 16 32] [--epochs 10]
                                         [--out results/embedding]

Prints one row per (method, dim) and writes ``comparison.csv`` and ``comparison.md`` to
``--out`` (columns in ``results/README.md``). Each run is embedded and then evaluated by
``hiergeo.embedding.evaluate_embedding`` with the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import pandas as pd

import gazetteer
from hiergeo.embedding import embed_tree, evaluate_embedding

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "dim", "map", "mean_distortion", "worst_distortion",
           "sibling_geo_spearman", "non_finite", "max_dist0", "embed_seconds", "eval_seconds"]


def markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 8, 16, 32])
    ap.add_argument("--epochs", type=int, default=10, help="optimisation epochs")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "embedding")
    args = ap.parse_args(argv)
    gz = gazetteer.load()
    rows = []
    for dim in args.dims:
        for method in ("construct", "optimize"):
            opts = {"epochs": args.epochs} if method == "optimize" else {}
            emb = embed_tree(gz, dim=dim, method=method, **opts)
            m = evaluate_embedding(emb, gz)
            m["max_dist0"] = emb.info["max_dist0"]
            row = {k: m[k] for k in COLUMNS}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    speed = table.pivot(index="dim", columns="method", values="embed_seconds")
    table["construct_speedup"] = table["dim"].map(speed["optimize"] / speed["construct"])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "comparison.csv", index=False, float_format="%.4f")
    header = (f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; optimisation: "
              f"{args.epochs} epochs of Riemannian Adam.\n\n")
    (args.out / "comparison.md").write_text(header + markdown(table.round(4)) + "\n")
    print(table.round(4).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
