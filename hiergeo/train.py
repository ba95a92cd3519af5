"""``python -m hiergeo.train``: the main training job.

The geo-weighted hyperbolic contrastive trainer is issue #4 and not built yet. Until it is,
this entry point checks what it can (the gazetteer the trainer will learn) and says what a
run will do, so that ``make demo`` stays a real, passing command.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

PLAN = """\
A training run will:
  1. load the world entity tree (gazetteer.load(): {counts})
  2. embed it in the Poincaré ball (hiergeo.embedding: {embedding})
  3. read a feature store written by `python -m hiergeo.features` (reading it: issue #4)
  4. train the geo-weighted hyperbolic contrastive loss (issue #4)
  5. predict by hierarchical beam descent and write results/<run_id>/ (issue #5)
Steps 3-5 are not implemented yet: this command stops after step 2."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m hiergeo.train",
        description="Train hiergeo (geo-weighted hyperbolic contrastive learning).")
    ap.add_argument("--config", help="YAML config file (presets: demo, osv5m, smoke)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return ap


def run(cfg: dict | None = None) -> dict:
    import gazetteer

    from .embedding import embed_tree

    gz = gazetteer.load()
    counts = gz.counts()
    emb = embed_tree(gz, dim=16, c=1.0)
    summary = (f"dim {emb.dim}, c {emb.c:g}, edge length {emb.info['edge_length']:.2f}, "
               f"furthest point {emb.info['max_dist0']:.2f} from the origin, "
               f"{emb.seconds:.1f} s")
    print(PLAN.format(counts=", ".join(f"{k} {v:,}" for k, v in counts.items()),
                      embedding=summary))
    return {"counts": counts, "embedding": emb, "trained": False}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run({"config": args.config, "overrides": args.overrides})
    return 0


if __name__ == "__main__":
    sys.exit(main())
