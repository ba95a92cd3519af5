"""The command line of ``python -m hiergeo.train`` (see :mod:`hiergeo.train`)."""

from __future__ import annotations


def main(argv=None) -> int:
    import argparse
    import logging

    from ..config import ConfigError, load_config
    from .loop import run as _run

    ap = argparse.ArgumentParser(
        prog="python -m hiergeo.train",
        description="Train hiergeo: image features -> entities of the Poincaré ball.")
    ap.add_argument("--config", help="preset name (default, demo, osv5m, photos, smoke) or "
                    "YAML file; default: demo")
    ap.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in this folder from its last checkpoint")
    ap.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr=1e-3")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.resume:
        bad = [o for o in args.overrides if not o.startswith("hardware.")]
        if args.config or bad:
            ap.error("--resume takes the run's own config; only hardware.* overrides are "
                     f"allowed (got {args.config or ''} {' '.join(bad)})")
        cfg = load_config(None, args.overrides) if args.overrides else None
        res = _run(cfg, resume=args.resume)
    else:
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            ap.error(str(exc))
        res = _run(cfg)
    if res:
        keys = ["acc_country", "acc_region", "acc_subregion", "acc_city", "median_km",
                "geoscore", "train_seconds"]
        print("final: " + ", ".join(f"{k} {res[k]:.4g}" for k in keys if k in res))
        if "run_dir" in res:
            print(f"results in {res['run_dir']}/: metrics.json, per_country.md, error_map.png, "
                  "log.csv (results/README.md explains each)")
    return 0
