"""``python -m hiergeo.predict``: geolocate photos with a trained model
(:class:`hiergeo.geolocate.Geolocator`, :func:`hiergeo.geolocate.predict_to_files`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from ..geolocate import PART_SIZE
from ..reports.answers import COORD_DECIMALS, P_DIGITS, PATH_FLOOR
from .common import (
    HelpFormatter,
    add_json_flag,
    count_int,
    finish,
    library_doc,
    parse_beams,
    pct,
    positive_int,
    setup_logging,
)

log = logging.getLogger("hiergeo.predict")

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.predict",
                                 description=library_doc("geolocate"),
                                 formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True,
                    help="model folder (python -m hiergeo.export) or run folder")
    ap.add_argument("photos", nargs="+", help="photos, folders, photo tables or feature stores")
    ap.add_argument("--image-dir", help="the photos of tables in OSV-5M's layout (an id "
                    "column, no path column: {id}.jpg, as hiergeo.features reads them; "
                    "default: the table's folder)")
    ap.add_argument("--out", action="append", default=None,
                    help="output file, .csv/.parquet/.geojson; repeat for several "
                    f"(default predictions.csv). CSV and GeoJSON round probabilities to "
                    f"{P_DIGITS} significant digits and coordinates to {COORD_DECIMALS} "
                    "decimals; Parquet keeps every digit")
    ap.add_argument("--topk", type=positive_int, default=None,
                    help="paths per photo (default: the model's, 5); paths after the first "
                    f"less probable than {PATH_FLOOR:g} are left out".replace("e-0", "e-"))
    ap.add_argument("--beams", help="beam widths per level, e.g. 5,5,5,5 for the five most "
                    "probable whole paths (default: the model's; the last level's width "
                    "bounds how many paths come back)")
    ap.add_argument("--within", help="answer only inside this region: ISO country codes "
                    "(FR,DE), country names, OSV-5M region keys (Bavaria_DE), or a .geojson "
                    "polygon file")
    ap.add_argument("--map", help="also write this self-contained HTML map")
    ap.add_argument("--batch-size", type=positive_int, default=64,
                    help="photos through the backbone at a time")
    ap.add_argument("--workers", type=count_int, default=None,
                    help="image decoding processes (default: up to 4 on a CPU, three "
                    "quarters of the CPUs on a GPU)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    ap.add_argument("--backbone-weights", help="local weights file for the model's backbone")
    ap.add_argument("--allow-download", action="store_true",
                    help="let timm reach the hub (hub weights, hf-hub: model names)")
    ap.add_argument("--restart", action="store_true",
                    help="discard the saved parts of an earlier, different prediction")
    ap.add_argument("--no-memory", action="store_true",
                    help="predict with the model alone, without reading its retrieval memory")
    ap.add_argument("--model-sha256", help="refuse the model unless its SHA256SUMS has this "
                    "sha256 (python -m hiergeo.export prints it)")
    ap.add_argument("--no-check", action="store_true",
                    help="skip checking the model folder's files against SHA256SUMS (it "
                    "reads every file once: about 7 s per 10 GB)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--part-size", type=positive_int, default=PART_SIZE,
                    help="photos predicted and saved at a time: a crash loses at most one "
                    "part, and the same command run again resumes")
    add_json_flag(ap)
    return ap


def human_lines(report: dict, outs: list[Path], map_path: str | None) -> list[str]:
    """How many photos were placed, how well where a truth is known, where the files are."""
    lines = [f"Geolocated {report['photos']:,} photos in {report['seconds']:,.1f} s "
             f"({report['images_per_s']:,.1f} photos/s"
             + (f", {report['resumed']:,} from saved parts" if report.get("resumed") else "")
             + ")."]
    from ..reports.answers import sidecar_paths

    side = {k: str(v) for k, v in sidecar_paths(outs[0]).items()}
    if report["skipped"]:
        lines.append(f"  {report['skipped']:,} could not be read: {side['skipped']} gives each "
                     "reason")
    t = report.get("truth")
    if t:
        lines.append(f"  against the {t['n']:,} known positions: country "
                     f"{pct(t.get('acc_country'))}, region {pct(t.get('acc_region'))}, city "
                     f"{pct(t.get('acc_city'))}; median {t['median_km']:,.0f} km, GeoScore "
                     f"{t['geoscore']:,.0f} (by country: {side['per_country_md']})")
    lines.append("Wrote " + ", ".join(str(o) for o in outs)
                 + " (results/README.md explains every column)."
                 + (f" Open {map_path} in a browser (it works offline)." if map_path else ""))
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    import torch

    from gazetteer import InputError

    from ..data.photos import is_store
    from ..export import ModelFolderError
    from ..files import clobbered_input, exclusive, output_lock
    from ..geolocate import Geolocator, predict_to_files
    from ..model.backbones import WeightsError
    from ..reports.answers import OUT_SUFFIXES, sidecar_paths, write_outputs

    outs = [Path(o) for o in (args.out or ["predictions.csv"])]
    for o in outs:
        if o.suffix.lower() not in OUT_SUFFIXES:
            print(f"error: {o}: the output's suffix must be one of {sorted(OUT_SUFFIXES)}",
                  file=sys.stderr)
            return 2
    missing = [p for p in [*args.photos, *([args.image_dir] if args.image_dir else [])]
               if not Path(p).exists()]
    if missing:  # before the model loads
        print(f"error: {missing[0]}: no such file or folder"
              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), file=sys.stderr)
        return 2
    folder = next((o for o in [*outs, *([Path(args.map)] if args.map else [])] if o.is_dir()),
                  None)
    if folder is not None:
        print(f"error: {folder} is a folder; --out and --map name files (e.g. "
              f"{folder / 'predictions.csv'})", file=sys.stderr)
        return 2
    if args.map and Path(args.map).suffix.lower() not in (".html", ".htm"):
        print(f"error: --map {args.map}: the map is an HTML page; give it a .html name",
              file=sys.stderr)
        return 2
    written = [*outs, *([Path(args.map)] if args.map else []), Path(f"{outs[0]}.parts"),
               *sidecar_paths(outs[0]).values()]
    stores = [p for p in args.photos if is_store(Path(p))]
    inputs = [*args.photos, *([args.within] if args.within and Path(args.within).is_file()
                              else [])]
    clash = clobbered_input(written, inputs, folders_read_whole=[*stores, args.model])
    if clash:
        print(f"error: {clash}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    held = contextlib.ExitStack()
    try:
        # the lock first: a second prediction into the same place stops before loading a
        # model (minutes at OSV-5M's size) or listing its photos
        outs[0].parent.mkdir(parents=True, exist_ok=True)
        held.enter_context(exclusive(output_lock(outs[0]), f"the prediction into {outs[0]}"))
        g = Geolocator.load(args.model, device=args.device,
                            backbone_weights=args.backbone_weights,
                            allow_download=args.allow_download, check=not args.no_check,
                            memory=not args.no_memory, expect_sha256=args.model_sha256)
        if args.beams:
            g.settings["beams"] = parse_beams(args.beams)
        kw = {"topk": args.topk, "batch_size": args.batch_size, "workers": args.workers,
              "progress": not args.no_progress, "within": args.within}
        if args.image_dir:
            kw["image_dir"] = args.image_dir
        if any(is_store(Path(p)) for p in args.photos):  # features: fast, in one go
            table = g.predict(args.photos, **kw)
            write_outputs(table, outs)
        else:
            table = predict_to_files(g, args.photos, outs, part_size=args.part_size,
                                     restart=args.restart, lock=False, **kw)
        if args.map:
            from ..reports import write_map

            write_map(table, args.map)
            log.info("wrote %s", args.map)
    except (InputError, WeightsError, ModelFolderError, ValueError, FileNotFoundError,
            FileExistsError) as exc:  # FileExistsError: files.Busy, another prediction
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        held.close()
    if not len(table):
        print(f"error: none of the {len(table.attrs.get('skipped', []))} photos could be read "
              f"(see {outs[0].with_suffix('')}.skipped.csv)", file=sys.stderr)
        return 1
    report = {"photos": len(table), "skipped": len(table.attrs.get("skipped", [])),
              "outputs": [str(o) for o in outs], **g.timings.report()}
    if "summary" in table.attrs:
        report["truth"] = table.attrs["summary"]
    finish(human_lines(report, outs, args.map), report, args.json)
    return 0
