"""``python -m hiergeo.embedding``: embed the gazetteer's tree and measure the embedding
(:func:`hiergeo.embedding.run.run`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import setup_logging


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m hiergeo.embedding",
        description="Embed the gazetteer's tree and measure the embedding.")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--c", type=float, default=1.0, help="curvature (positive)")
    ap.add_argument("--method", choices=["construct", "optimize"], default="construct")
    ap.add_argument("--epochs", type=int, default=None, help="optimize: training epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gazetteer", type=Path, default=None, help="artefact (default: world)")
    ap.add_argument("--out", type=Path, default=Path("results/embedding"))
    ap.add_argument("--no-plot", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ..embedding.run import run

    m = run(args.dim, args.c, args.method, args.out, args.seed, args.gazetteer, args.epochs,
            not args.no_plot)
    keys = ("map", "mean_distortion", "worst_distortion", "sibling_geo_spearman", "non_finite",
            "embed_seconds", "seconds")
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=2))
    return 0
