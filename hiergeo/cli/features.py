"""``python -m hiergeo.features``: extract backbone features into a feature store
(:func:`hiergeo.features.extract`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..model.backbones import EMBEDDED
from .common import (
    HelpFormatter,
    add_json_flag,
    count_int,
    finish,
    positive_int,
    setup_logging,
    skipped_line,
    store_out_error,
)

log = logging.getLogger("hiergeo.features")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m hiergeo.features",
                                 description="Extract backbone features into a feature store.",
                                 epilog="Embeddings computed elsewhere (a .npy/.npz/Parquet "
                                 "matrix with a table, or WebDataset tars such as PLONK's "
                                 "OSV-5M shards): python -m hiergeo.features import --help")
    ap.add_argument("--data", type=Path, required=True,
                    help="OSV-5M CSV, table with path/latitude/longitude, or folder (EXIF GPS)")
    ap.add_argument("--image-dir", type=Path, default=None, help="OSV-5M images: {id}.jpg "
                    "files or the published *.zip files, read as they are (default: the "
                    "CSV's folder)")
    ap.add_argument("--layout", choices=["auto", "osv5m", "table", "exif"], default="auto",
                    help="auto: a folder is exif, a table with a path column is table, one "
                    "with an id column and no path is osv5m ({id}.jpg in --image-dir)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="go on when more than 1%% of an OSV-5M table's ids are in none of "
                    "the zips (hiergeo.data.zips.MAX_MISSING_SHARE; they are listed in "
                    "skipped.csv), instead of refusing the folder")
    ap.add_argument("--out", type=Path, required=True, help="the feature store's folder")
    ap.add_argument("--backbone", default=EMBEDDED,
                    help=f"timm model name, {EMBEDDED} (offline ImageNet weights), or "
                    "hf:NAME_OR_FOLDER: a Hugging Face vision tower (CLIP, SigLIP, DINOv2, "
                    "ViT; e.g. hf:geolocal/StreetCLIP) from a save_pretrained folder or the "
                    "local HF cache, with its own preprocessing (pip install 'hiergeo[hf]')")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--weights", type=Path, help="local checkpoint for --backbone")
    w.add_argument("--allow-download", action="store_true",
                   help="fetch timm's pretrained weights (or an hf: model) from the hub")
    w.add_argument("--random-weights", action="store_true", help="untrained (timing only)")
    ap.add_argument("--batch-size", type=positive_int, default=64,
                    help="photos through the backbone at a time")
    ap.add_argument("--workers", type=count_int, default=None,
                    help="DataLoader workers per process (default: on a GPU 3/4 of its CPU "
                         "share, on a CPU min(4, its share))")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads per process (default: torch's, or the process's "
                         "CPU share when several run on one node)")
    ap.add_argument("--shard-size", type=positive_int, default=10_000,
                    help="photos per shard: the unit of resuming and of the work processes "
                    "share under torchrun")
    ap.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default="float16",
                    help="the stored features' type (float16 halves the size)")
    ap.add_argument("--device", default="auto",
                    help="auto, cpu, cuda (= cuda:LOCAL_RANK), cuda:1...")
    ap.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                    help="where JPEGs are decoded: DataLoader workers (cpu), nvJPEG on the "
                         "GPU (gpu), or auto (hiergeo.features.AUTO_DECODE on a GPU)")
    add_json_flag(ap)
    return ap


def _ranges(ks: list[int]) -> str:
    return ", ".join(str(k) for k in ks[:8]) + (f" ... ({len(ks)} in all)" if len(ks) > 8 else "")


def human_lines(report: dict, out: Path, backbone: str) -> list[str]:
    """What was extracted, what was skipped and why, where the store is, what next."""
    if not report.get("finalized"):
        return [f"Wrote shards {_ranges(report['shards_written']) or 'none'} of the store "
                f"{out}; shards {_ranges(report['shards_remaining'])} are other processes' "
                "(the last to finish writes the index; the same command run again resumes)."]
    lines = [f"Extracted {backbone} features of {report['images_read']:,} photos into {out}/ "
             f"({report['shards']} shard(s))."]
    if report["skipped"]:
        lines.append(skipped_line(report, out, "photos"))
    lines.append(f"Next: python -m hiergeo.train --config default data.train={out}")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["import"]:
        from .importing import main as import_main

        return import_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging()
    if err := store_out_error(args.out):  # before the photos are read or the backbone loads
        print(err, file=sys.stderr)
        return 2
    import torch

    from gazetteer import InputError

    from ..data.records import read_records
    from ..devices import cpu_share, loader_workers, ranks_from_env, torch_threads, use_device
    from ..features import extract
    from ..model.backbones import WeightsError, create_backbone

    try:
        ranks = ranks_from_env()
        threads = torch_threads(args.threads, ranks)
        if threads:
            torch.set_num_threads(threads)
        dev = use_device(args.device, ranks.local_rank)
        workers = (loader_workers(dev, cpu_share(ranks)) if args.workers is None
                   else args.workers)
        if ranks.world > 1:
            log.info("rank %d of %d: %d threads, %d DataLoader workers, %s", ranks.rank,
                     ranks.world, torch.get_num_threads(), workers, dev)
        if args.decode == "gpu" and dev.type != "cuda":  # before anything is read or written
            raise ValueError(f"--decode gpu needs a CUDA device (this one: {dev}); use "
                             "--decode cpu or auto")
        records = read_records(args.data, args.image_dir, args.layout,
                               progress=ranks.local_rank == 0,
                               allow_missing=args.allow_missing)
        if not len(records):
            raise InputError(f"{args.data}: no photos in it (a folder is searched for image "
                             "files; a table lists them in a path column)")
        backbone = create_backbone(args.backbone, weights=args.weights,
                                   allow_download=args.allow_download,
                                   random_weights=args.random_weights)
        report = extract(records, args.out, backbone=backbone, batch_size=args.batch_size,
                         workers=workers, shard_size=args.shard_size, dtype=args.dtype,
                         device=str(dev), source={"data": str(args.data),
                                                  "layout": args.layout},
                         progress=ranks.local_rank == 0, rank=ranks.rank, world=ranks.world,
                         decode=args.decode)
    except (InputError, WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.get("finalized") and not report.get("images_read"):
        print(f"error: none of the {report.get('skipped', 0)} photos could be used (no "
              f"position, or unreadable): {args.out}/skipped.csv lists each with its reason",
              file=sys.stderr)
        return 1
    finish(human_lines(report, args.out, args.backbone), report, args.json)
    return 0
