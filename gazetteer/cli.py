"""``python -m gazetteer {build,label,info}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from .boundaries import COAST_KM, BoundarySource
from .core import build, load
from .errors import ArtefactError, InputError
from .labeller import MODES


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gazetteer",
        description="Build the entity tree country/region/subregion/city and label points.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build a gazetteer artefact (offline by default)")
    b.add_argument("--out", type=Path, default=None,
                   help="folder to write (default: the cache that gazetteer.load() reads)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--places", type=Path, help="places CSV: lat,lon,name,admin1,admin2,cc")
    src.add_argument("--dataset", type=Path,
                     help="labelled dataset in OSV-5M's layout: only entities seen in it")
    b.add_argument("--boundaries", type=Path,
                   help="any file geopandas reads with admin-0/admin-1 layers")
    b.add_argument("--admin0-layer", default="countries")
    b.add_argument("--admin1-layer", default="states_provinces")
    b.add_argument("--code-field", default="iso_a2", help="ISO alpha-2 column of the layers")
    b.add_argument("--name-field", default="name")
    b.add_argument("--no-boundaries", action="store_true", help="build without polygons")

    lab = sub.add_parser("label", help="label the points of a CSV")
    lab.add_argument("input", type=Path)
    lab.add_argument("--out", type=Path, required=True)
    lab.add_argument("--mode", choices=MODES, default="nearest-city")
    lab.add_argument("--lat-col", default="latitude")
    lab.add_argument("--lon-col", default="longitude")
    lab.add_argument("--gazetteer", type=Path, default=None, help="artefact (default: world)")
    lab.add_argument("--mask-invalid", action="store_true",
                     help="leave rows with invalid coordinates empty instead of failing")
    lab.add_argument("--coast-km", type=float, default=COAST_KM)

    inf = sub.add_parser("info", help="counts per level, coverage, sources and versions")
    inf.add_argument("path", nargs="?", type=Path, default=None)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "build":
            return _build(args)
        if args.cmd == "label":
            return _label(args)
        return _info(args)
    except (InputError, ArtefactError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _build(args) -> int:
    if args.no_boundaries:
        boundaries = False
    elif args.boundaries is not None:
        boundaries = BoundarySource(args.boundaries, args.admin0_layer, args.admin1_layer,
                                    args.code_field, args.name_field)
    else:
        boundaries = None
    if args.out is None:
        if args.places or args.dataset or args.boundaries or args.no_boundaries:
            print("error: --out is needed when the sources are not the defaults", file=sys.stderr)
            return 2
        gz = load(rebuild=True)
    else:
        gz = build(args.places, dataset=args.dataset, boundaries=boundaries, out=args.out)
    print(json.dumps(gz.info(), indent=2, ensure_ascii=False))
    return 0


def _label(args) -> int:
    df = pd.read_csv(args.input, dtype=str, keep_default_na=False, encoding="utf-8")
    for col in (args.lat_col, args.lon_col):
        if col not in df.columns:
            raise InputError(f"{args.input}: no column {col!r}; columns are {list(df.columns)} "
                             f"(choose with --lat-col/--lon-col)")
    lat = pd.to_numeric(df[args.lat_col].replace("", "nan"), errors="coerce")
    lon = pd.to_numeric(df[args.lon_col].replace("", "nan"), errors="coerce")
    gz = load(args.gazetteer)
    try:
        labels = gz.label(lat.to_numpy(), lon.to_numpy(), mode=args.mode,
                          on_invalid="mask" if args.mask_invalid else "raise",
                          coast_km=args.coast_km)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc} (row 0 is the first data row)") from None
    out = pd.concat([df, labels.add_prefix("label_")], axis=1)
    tmp = args.out.with_name(args.out.name + ".tmp")
    out.to_csv(tmp, index=False, encoding="utf-8")
    tmp.replace(args.out)
    masked = int(labels["country"].isna().sum())
    print(f"labelled {len(out)} rows ({masked} masked) -> {args.out}")
    return 0


def _info(args) -> int:
    gz = load(args.path)
    print(json.dumps(gz.info(), indent=2, ensure_ascii=False))
    return 0
