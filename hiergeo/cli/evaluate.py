"""``python -m hiergeo.evaluate``: a trained run on a feature store, OSV-5M's metrics and the
per-country reports (:func:`hiergeo.evaluate.evaluate_run`)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    HelpFormatter,
    add_json_flag,
    finish,
    library_doc,
    parse_beams,
    pct,
    setup_logging,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.evaluate",
                                 description=library_doc("evaluate"),
                                 formatter_class=HelpFormatter)
    ap.add_argument("--run", "--run-dir", dest="run", required=True,
                    help="run folder (results/<run_id>); under torchrun spell it --run-dir "
                    "(torchrun reads --run as its own --run-path)")
    ap.add_argument("--data", help="feature store to evaluate (default: the run's val split)")
    ap.add_argument("--method", default="descent", choices=["descent", "flat"],
                    help="descent: level by level down the tree (the model's way); flat: every "
                    "city scored at once, for comparison")
    ap.add_argument("--beams", help="beam widths per level, e.g. 5,5,5,5 (default: the run's "
                    "eval.beams)")
    ap.add_argument("--coords", choices=["city", "weighted"],
                    help="the predicted point: the best path's city, or the top-k paths' "
                    "points weighted by probability (default: the run's eval.coords)")
    ap.add_argument("--out", help="output folder (default: the run folder)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--no-memory", action="store_true",
                    help="descent with the model alone, without the run's retrieval memory "
                    "(flat search never uses it)")
    add_json_flag(ap)
    return ap


def human_lines(res: dict, args) -> list[str]:
    """What was evaluated, OSV-5M's headline figures, where the files are."""
    data = args.data or "the run's validation split"
    how = args.method + (" without the memory" if args.no_memory else "")
    lines = [f"Evaluated {args.run} on {data}: {res.get('n', 0):,} photos, {how}, "
             f"{res.get('queries_per_s', 0):,.0f} photos/s."]
    lines.append(f"  country {pct(res.get('acc_country'))}, region {pct(res.get('acc_region'))}, "
                 f"subregion {pct(res.get('acc_subregion'))}, city {pct(res.get('acc_city'))}; "
                 f"median {res.get('median_km', float('nan')):,.0f} km, GeoScore "
                 f"{res.get('geoscore', float('nan')):,.0f}")
    out = args.out or args.run
    lines.append(f"Files in {out}/: per_country.md (by country: open it first), metrics.json "
                 "(every figure, under \"eval\"), predictions.parquet and, with eval.maps, "
                 "error_map.png (results/README.md explains each).")
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ..config import ConfigError
    from ..data.splits import DataError
    from ..evaluate import evaluate_run

    try:
        beams = parse_beams(args.beams) if args.beams else None
        res = evaluate_run(args.run, data=args.data, method=args.method, beams=beams,
                           coords=args.coords, out=args.out, device=args.device,
                           memory=not args.no_memory)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res is not None:  # None: a torchrun process other than the first
        finish(human_lines(res, args), {k: v for k, v in res.items() if not isinstance(v, dict)},
               args.json)
    return 0
