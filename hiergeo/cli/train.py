"""``python -m hiergeo.train``: train (or continue) a run (:func:`hiergeo.train.run`)."""

from __future__ import annotations

import argparse
import sys

from .common import HelpFormatter, add_json_flag, finish, setup_logging


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m hiergeo.train",
        description="Train hiergeo: image features -> entities of the Poincaré ball.")
    ap.add_argument("--config", help="preset name (default, demo, osv5m, photos, smoke) or "
                    "YAML file; default: demo")
    ap.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in this folder from its last checkpoint")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config (preset, then overrides) as YAML and exit: "
                    "every key and its value; hiergeo/config.py comments each")
    ap.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr=1e-3")
    add_json_flag(ap)
    ap.epilog = ("examples:\n"
                 "  python -m hiergeo.train                      # the demo, synthetic\n"
                 "  python -m hiergeo.train --config default data.train=STORE\n"
                 "  python -m hiergeo.train --config default --print-config\n"
                 "  python -m hiergeo.train --resume results/RUN")
    ap.formatter_class = HelpFormatter
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    setup_logging()
    from ..config import ConfigError, load_config
    from ..data.splits import DataError
    from ..files import DiskFullError
    from ..train.loop import run as _run

    if args.resume:
        bad = [o for o in args.overrides if not o.startswith("hardware.")]
        if args.config or bad:
            ap.error("--resume takes the run's own config; only hardware.* overrides are "
                     f"allowed (got {args.config or ''} {' '.join(bad)})")
        try:
            cfg = load_config(None, args.overrides) if args.overrides else None
        except ConfigError as exc:
            ap.error(str(exc))
    else:
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            ap.error(str(exc))
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
    try:  # the user's mistakes found once the run starts: one line, not a traceback
        res = _run(cfg, resume=args.resume) if args.resume else _run(cfg)
    except (ConfigError, DataError, FileExistsError, DiskFullError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res:
        keys = ["acc_country", "acc_region", "acc_subregion", "acc_city", "median_km",
                "geoscore", "train_seconds"]
        lines = ["final: " + ", ".join(f"{k} {res[k]:.4g}" for k in keys if k in res)]
        if "run_dir" in res:
            lines.append(f"results in {res['run_dir']}/: metrics.json, per_country.md, "
                         "error_map.png, log.csv (results/README.md explains each)")
        if not args.resume and cfg.data.train is None and cfg.data.images is None:
            lines.append("these figures are on the demo's synthetic features: they show the "
                         "pipeline runs, not how well photos are placed (make photos: real "
                         "photos)")
        finish(lines, res, args.json)
    return 0
