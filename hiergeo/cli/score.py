"""``python -m hiergeo.score``: any model's predictions scored OSV-5M's way, and models
compared (:func:`hiergeo.score.score_files`)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import HelpFormatter, library_doc, setup_logging


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.score",
                                 description=library_doc("score"),
                                 formatter_class=HelpFormatter)
    ap.add_argument("predictions", nargs="+", help="prediction tables (.csv/.parquet/.geojson)")
    ap.add_argument("--truth", required=True, help="truth table: ids, latitude, longitude, "
                    "OSV-5M label columns if any")
    ap.add_argument("--out", default="score", help="output folder (default score/)")
    ap.add_argument("--name", action="append", default=None,
                    help="a model's label, once per prediction file in order (default: the "
                    "file names)")
    ap.add_argument("--units", default="auto", choices=["auto", "degrees", "radians"],
                    help="of the predicted coordinates; auto converts radians when they fit "
                    "the truth better, with a warning")
    ap.add_argument("--samples", choices=["first", "medoid"],
                    help="several rows per id without a rank (PLONK-style samples): score the "
                    "first, or the medoid (the most central sample)")
    ap.add_argument("--allow-unmatched", action="store_true",
                    help="score the rows every model answered and list the others in "
                    "unmatched.csv, instead of refusing ids that do not match")
    ap.add_argument("--id-column", help="the id column (default: guessed, e.g. id, image)")
    ap.add_argument("--lat-column", help="the predicted latitude column (default: guessed)")
    ap.add_argument("--lon-column", help="the predicted longitude column (default: guessed)")
    ap.add_argument("--confidence-level", default="country",
                    choices=["country", "region", "subregion", "city"],
                    help="the level a single confidence column is about (default country)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--geocoder", default="gazetteer",
                    choices=["gazetteer", "reverse_geocoder"],
                    help="how points get their keys: the gazetteer's osv5m mode (the same "
                    "answers, faster) or the reverse_geocoder library")
    ap.add_argument("--no-maps", action="store_true", help="skip the PNG maps")
    ap.add_argument("--json", action="store_true",
                    help="print summary.json on stdout (the human lines go to stderr)")
    return ap


def _pct(v) -> str:
    return "n/a" if v != v else f"{100 * v:.1f}%"


def human_lines(res: dict, out: str) -> list[str]:
    """A few lines: what was scored, each model's headline figures, the main differences,
    where the files are."""
    n, nt = res["rows"], res["truth_rows"]
    lines = [f"Scored {len(res['models'])} model(s) on {n:,} photos"
             + (f" of {nt:,} in the truth" if n != nt else "")
             + f" (labels: {res['labels']})."]
    for name, m in res["models"].items():
        s = m["summary"]
        lines.append(f"  {name}: GeoScore {s['geoscore']:,.0f}, median {s['median_km']:,.0f} "
                     f"km; country {_pct(s['acc_country'])}, region {_pct(s['acc_region'])}, "
                     f"city {_pct(s['acc_city'])}")
    cmp = res.get("comparison")
    if cmp is not None:
        o = cmp[(cmp["scope"] == "overall") & cmp["metric"].isin(["geoscore", "acc_country"])]
        for r in o.itertuples(index=False):
            scale, unit = (100, " pts") if r.metric == "acc_country" else (1, "")
            lines.append(f"  {r.model} - {r.reference}, {r.metric}: {scale * r.diff:+,.1f}"
                         f"{unit} [95% CI {scale * r.ci_low:+,.1f}, {scale * r.ci_high:+,.1f}]"
                         f" -> {r.better or 'no clear winner'}")
    if len(res["unmatched"]):
        lines.append(f"  {len(res['unmatched'])} unmatched rows left out: {out}/unmatched.csv")
    what = "compare.html (opens offline), comparison.csv, " if cmp is not None else ""
    lines.append(f"Files in {out}/: {what}per model metrics.json and per_country.csv.")
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ..score import ScoreInputError, score_files
    from ..score.run import plain

    if args.resamples < 10:
        print(f"error: --resamples must be at least 10, not {args.resamples}", file=sys.stderr)
        return 2
    try:
        res = score_files(args.predictions, args.truth, out=args.out, names=args.name,
                          units=args.units, samples=args.samples,
                          allow_unmatched=args.allow_unmatched, resamples=args.resamples,
                          seed=args.seed, geocoder=args.geocoder,
                          confidence_level=args.confidence_level, id_column=args.id_column,
                          lat_column=args.lat_column, lon_column=args.lon_column,
                          maps=not args.no_maps)
    except ScoreInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = human_lines(res, args.out)
    if args.json:
        print(json.dumps(plain(res), indent=2, default=float))
        print("\n".join(lines), file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0
