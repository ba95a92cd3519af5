"""Start-up cost of ``model.entities=data``: the entity prototypes' one streamed pass.

Usage::

    python benchmarks/bench_prototypes.py [--rows 11709,117096] [--out DIR]

Times :func:`hiergeo.model.entity_map.feature_prototypes` over the first N rows of the names
benchmark's training store (every gazetteer entity, 256-d features) and the growth of peak
memory (``ru_maxrss``) it causes, one process per size so the peaks do not mix. Writes
``DIR/prototypes.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(n: int) -> dict:
    import numpy as np
    import torch

    import gazetteer
    from hiergeo.config import load_config
    from hiergeo.data.names import names_benchmark
    from hiergeo.data.splits import _subset, read_store_split
    from hiergeo.model.entity_map import feature_prototypes
    from hiergeo.model.hierarchy import Hierarchy

    torch.set_num_threads(1)
    gz = gazetteer.load()
    tr, _, _ = read_store_split(names_benchmark(gz=gz)["train"], load_config("default"), gz,
                                "train")
    hier = Hierarchy.from_gazetteer(gz)
    if n < len(tr):
        tr = _subset(tr, np.arange(n))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    proto, _ = feature_prototypes(tr, hier.parent, hier.depth)
    secs = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": len(tr), "entities": len(proto), "dim": proto.shape[1],
            "seconds": round(secs, 2), "peak_growth_mb": round((rss1 - rss0) / 1024, 1),
            "prototypes_mb": round(proto.numel() * 4 / 2**20, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="11709,117096")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    rows = []
    for n in [int(x) for x in args.rows.split(",") if x]:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1])
    res = {"rows": rows, "machine": {"platform": platform.platform(),
                                     "python": platform.python_version()}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "prototypes.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"prototype pass at {len(rows)} sizes; {Path(args.out) / 'prototypes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
