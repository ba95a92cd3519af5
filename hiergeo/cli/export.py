"""``python -m hiergeo.export``: a trained run as one portable model folder
(:func:`hiergeo.export.from_run`, :func:`hiergeo.export.write`)."""

from __future__ import annotations

import argparse
import sys

from .common import HelpFormatter, add_json_flag, finish, library_doc, setup_logging


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.export", description=library_doc("export"),
                                 formatter_class=HelpFormatter)
    ap.add_argument("--run", "--run-dir", dest="run", required=True,
                    help="run folder written by python -m hiergeo.train (results/<run_id>)")
    ap.add_argument("--out", required=True, help="model folder to write (models/<name>)")
    ap.add_argument("--no-memory", action="store_true",
                    help="leave the retrieval memory out (smaller; predicts with the model "
                    "alone)")
    ap.add_argument("--include-backbone", action="store_true",
                    help="pack the backbone's weights even when frozen (a fine-tuned one "
                    "always travels)")
    ap.add_argument("--store", help="the run's training feature store, when it has moved "
                    "(its store.json names the backbone)")
    ap.add_argument("--features-only", action="store_true",
                    help="no backbone: the model predicts from features, not photos")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    add_json_flag(ap)
    return ap


def human_lines(fig: dict) -> list[str]:
    """What was packed, its digest (to pin it), how to use it."""
    mem, bb = fig["memory"], fig["backbone"]
    what = [f"{fig['entities']:,} entities",
            f"retrieval memory of {mem['n']:,} photos" if mem else "no retrieval memory",
            "no backbone (predicts from features)" if bb is None else
            f"features from {bb['name']} (predicts from a store of them, not from photos)"
            if bb.get("weights") == "imported" else
            f"backbone {bb['name']} ({'packed' if bb.get('included') else 'referenced'})"]
    size = sum(fig["bytes"].values())
    model = fig["model"]
    return [f"Exported the model to {model}/ ({size / 2**20:,.1f} MiB, {len(fig['bytes'])} "
            f"files): " + ", ".join(what) + ".",
            f"  sha256 {fig['sha256']} (pin it: --model-sha256 in hiergeo.predict, "
            "expect_sha256 in Geolocator.load)",
            f"Next: python -m hiergeo.predict --model {model} "
            f"{'FEATURE_STORE' if bb is None or bb.get('weights') == 'imported' else 'PHOTOS...'}"
            " --out predictions.csv"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ..export import DiskFullError, from_run, sums_digest, write
    from ..model.backbones import WeightsError

    try:
        p = from_run(args.run, memory=not args.no_memory,
                     include_backbone=args.include_backbone, store=args.store,
                     features_only=args.features_only)
        out = write(p, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, WeightsError, DiskFullError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    fig = {"model": str(out), "sha256": sums_digest(out), "entities": p.meta["entities"]["n"],
           "memory": p.meta["memory"], "backbone": p.meta["backbone"], "bytes": sizes}
    finish(human_lines(fig), fig, args.json)
    return 0
