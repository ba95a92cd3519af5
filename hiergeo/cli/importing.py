"""``python -m hiergeo.features import``: precomputed embeddings into a feature store
(:mod:`hiergeo.importing`).

The import runs in one process: under torchrun (``WORLD_SIZE`` > 1) every rank would run the
whole job into the same folder, so it stops with one line instead; run it without torchrun.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import (
    HelpFormatter,
    add_json_flag,
    finish,
    positive_int,
    setup_logging,
    skipped_line,
    store_out_error,
)

log = logging.getLogger("hiergeo.features")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m hiergeo.features import",
        description="Import precomputed embeddings into a feature store: a .npy/.npz/Parquet "
        "matrix with a table of ids and positions, or WebDataset tars (PLONK's OSV-5M "
        "layout: an .npy embedding and a json entry with latitude/longitude per sample). "
        "Rerunning the same command resumes.")
    ap.add_argument("--out", type=Path, required=True, help="the feature store's folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--matrix", type=Path,
                     help=".npy, .npz or .parquet: one embedding per row of --table")
    src.add_argument("--webdataset", nargs="+", metavar="SHARD",
                     help="tar shards: paths, globs or brace ranges (shard-{000..099}.tar)")
    ap.add_argument("--table", type=Path, help="CSV or Parquet: the matrix's ids and positions, "
                    "row for row (default: the Parquet matrix's own file)")
    ap.add_argument("--key", help="the .npz array to read (default: its only one)")
    ap.add_argument("--embedding-column", default=None,
                    help="the Parquet matrix's list column (default: embedding)")
    ap.add_argument("--embedding-key", default="street_clip.npy",
                    help="the samples' embedding entry (PLONK: street_clip.npy or "
                         "dinov2_vitl14_registers.npy)")
    ap.add_argument("--metadata-key", default="json",
                    help="the samples' JSON entry holding the id and position")
    ap.add_argument("--id-column", default="id", help="id column / JSON field")
    ap.add_argument("--latitude", default="latitude", help="latitude column / JSON field")
    ap.add_argument("--longitude", default="longitude", help="longitude column / JSON field")
    ap.add_argument("--name", default=None, help="what made the embeddings, recorded as the "
                    "store's backbone imported:NAME (default: the key, column or file stem)")
    ap.add_argument("--shard-size", type=positive_int, default=10_000,
                    help="rows (samples) per shard: the unit of resuming")
    ap.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default="float16",
                    help="the stored features' type (float16 halves the size)")
    add_json_flag(ap)
    return ap


def human_lines(report: dict, out: Path) -> list[str]:
    lines = [f"Imported {report['images_read']:,} embeddings ({report['backbone']}, dim "
             f"{report['dim']}) into {out}/ ({report['shards']} shard(s), "
             f"{len(report['shards_written'])} written now)."]
    if report["skipped"]:
        lines.append(skipped_line(report, out))
    for f, what in list(report.get("damaged", {}).items())[:3]:
        lines.append(f"  damaged: {f}: {what[:100]}")
    lines.append(f"Next: python -m hiergeo.train --config default data.train={out}")
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from gazetteer import InputError

    from ..devices import ranks_from_env
    from ..importing import import_matrix, import_webdataset

    try:
        world = ranks_from_env().world
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if world > 1:  # every rank would run the whole import into the same folder
        print(f"error: import runs in one process, and this is one of {world} (WORLD_SIZE="
              f"{world}); run it without torchrun: python -m hiergeo.features import ...",
              file=sys.stderr)
        return 2
    if err := store_out_error(args.out):
        print(err, file=sys.stderr)
        return 2
    common = {"id_col": args.id_column, "lat": args.latitude, "lon": args.longitude,
              "name": args.name, "shard_size": args.shard_size, "dtype": args.dtype}
    try:
        if args.matrix is not None:
            if args.webdataset is None and args.embedding_key != "street_clip.npy":
                log.warning("--embedding-key is for --webdataset; ignored")
            report = import_matrix(args.out, args.matrix, table=args.table, key=args.key,
                                   column=args.embedding_column, **common)
        else:
            if args.table is not None or args.key is not None:
                raise InputError("--table and --key go with --matrix; a WebDataset sample "
                                 "carries its own position (--metadata-key)")
            report = import_webdataset(args.out, args.webdataset,
                                       embedding_key=args.embedding_key,
                                       metadata_key=args.metadata_key, **common)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # in --out: one line; an I/O fault elsewhere keeps its traceback
        if exc.filename is None or args.out.resolve() not in (
                Path(exc.filename).resolve(), *Path(exc.filename).resolve().parents):
            raise
        print(f"error: cannot write the store in --out {args.out} ({exc.strerror or exc}); "
              "choose a folder you can write to", file=sys.stderr)
        return 2
    if not report["images_read"]:
        print(f"error: none of the {report['skipped']} rows could be used: "
              f"{args.out}/skipped.csv lists each with its reason", file=sys.stderr)
        return 1
    finish(human_lines(report, args.out), report, args.json)
    return 0
