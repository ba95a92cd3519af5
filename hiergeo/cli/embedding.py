"""``python -m hiergeo.embedding``: embed the gazetteer's tree and measure the embedding
(:func:`hiergeo.embedding.run.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import HelpFormatter, add_json_flag, finish, setup_logging


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m hiergeo.embedding",
        description="Embed the gazetteer's tree and measure the embedding.")
    ap.add_argument("--dim", type=int, default=16, help="dimensions of the ball")
    ap.add_argument("--c", type=float, default=1.0, help="curvature (positive)")
    ap.add_argument("--method", choices=["construct", "optimize"], default="construct",
                    help="construct: combinatorial; optimize: Nickel & Kiela 2017 with "
                    "Riemannian Adam (the baseline)")
    ap.add_argument("--epochs", type=int, default=None, help="optimize: training epochs")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--gazetteer", type=Path, default=None, help="artefact (default: world)")
    ap.add_argument("--out", type=Path, default=Path("results/embedding"),
                    help="output folder")
    ap.add_argument("--no-plot", action="store_true", help="skip disk.png")
    add_json_flag(ap)
    return ap


def human_lines(m: dict, out: Path, plot: bool) -> list[str]:
    """What was embedded, how well the ball keeps the tree, where the files are."""
    lines = [f"Embedded {m.get('n_entities', 0):,} entities of the gazetteer's tree in a "
             f"{m.get('dim')}-d Poincaré ball (c={m.get('c', 1.0):g}, {m.get('method')}) in "
             f"{m.get('seconds', 0):.1f} s."]
    if m.get("non_finite"):
        lines.append(f"  {m['non_finite']} coordinates are not finite: the other figures were "
                     "skipped")
    else:
        lines.append(f"  MAP {m['map']:.3f}, mean distortion {m['mean_distortion']:.3f} (worst "
                     f"{m['worst_distortion']:.3g}), siblings' geography (Spearman) "
                     f"{m['sibling_geo_spearman']:.3f}")
    pic = ", disk.png (open it: countries and regions on the disk)" if plot else ""
    lines.append(f"Files in {out}/: metrics.json (every figure), points.safetensors, "
                 f"embedding.json{pic}.")
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ..embedding.run import run

    m = run(args.dim, args.c, args.method, args.out, args.seed, args.gazetteer, args.epochs,
            not args.no_plot)
    keys = ("map", "mean_distortion", "worst_distortion", "sibling_geo_spearman", "non_finite",
            "embed_seconds", "seconds")
    finish(human_lines(m, args.out, not args.no_plot), {k: m[k] for k in keys if k in m},
           args.json)
    return 0
