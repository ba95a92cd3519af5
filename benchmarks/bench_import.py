"""Importing precomputed embeddings (``python -m hiergeo.features import``): time, peak memory
and bytes read, for a matrix with its table and for WebDataset tars in PLONK's OSV-5M layout.

    python benchmarks/bench_import.py [--rows 200000] [--dim 1024] [--samples 20000]
        [--tars 10] [--photo-kb 30] [--out results/benchmarks/import.json]

Writes the inputs to a temporary folder, then imports each in a fresh process (so the peak
resident size is the import's): a float32 ``.npy`` of ``--rows`` x ``--dim`` with a CSV of
ids and positions, and ``--samples`` samples spread over ``--tars`` tars, each with a ``jpg``
of ``--photo-kb`` KB (random bytes: never decoded), its ``json`` row and the two embeddings
PLONK's shards carry (``street_clip.npy`` at ``--dim``, ``dinov2_vitl14_registers.npy``).
The inputs were just written, so they are in the page cache: the figures are the import's own
work, not a cold disk's. ``bytes_read`` is the process's ``rchar`` (Linux ``/proc``): what the
import read through system calls, page-cache hits included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _rchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child(kind: str, folder: Path) -> dict:
    from hiergeo.devices import peak_rss_bytes
    from hiergeo.importing import import_matrix, import_webdataset

    before, t = _rchar(), time.perf_counter()
    if kind == "matrix":
        rep = import_matrix(folder / "store-matrix", folder / "e.npy", table=folder / "t.csv",
                            progress=False)
    else:
        rep = import_webdataset(folder / "store-wds", [str(folder / "tars" / "*.tar")],
                                embedding_key="street_clip.npy", progress=False)
    sec = time.perf_counter() - t
    return {"seconds": round(sec, 2), "rows": rep["images_read"],
            "rows_per_s": round(rep["images_read"] / sec), "skipped": rep["skipped"],
            "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3),
            "bytes_read": _rchar() - before}


def _positions(n: int, rng) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(10**15 + i) for i in range(n)],
                         "latitude": rng.uniform(-60, 70, n).round(6),
                         "longitude": rng.uniform(-180, 180, n).round(6)})


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def write_inputs(folder: Path, rows: int, dim: int, samples: int, tars: int,
                 photo_kb: int) -> dict:
    rng = np.random.default_rng(0)
    m = np.lib.format.open_memmap(folder / "e.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, dim))
    for a in range(0, rows, 50_000):  # a block at a time: the writer needs no rows x dim copy
        m[a:a + 50_000] = rng.standard_normal((min(50_000, rows - a), dim), dtype=np.float32)
    m.flush()
    del m
    _positions(rows, rng).to_csv(folder / "t.csv", index=False)
    (folder / "tars").mkdir()
    pos = _positions(samples, rng)
    per = -(-samples // tars)
    photo = rng.integers(0, 256, photo_kb * 1024, dtype=np.uint8).tobytes()
    for k in range(tars):
        with tarfile.open(folder / "tars" / f"{k:06d}.tar", "w") as tf:
            for j in range(k * per, min((k + 1) * per, samples)):
                r = pos.iloc[j]
                emb = rng.standard_normal(dim, dtype=np.float32)
                entries = {"jpg": photo,
                           "json": json.dumps({"id": r.id, "latitude": r.latitude,
                                               "longitude": r.longitude}).encode(),
                           "street_clip.npy": _npy(emb),
                           "dinov2_vitl14_registers.npy": _npy(emb)}
                for ext, data in entries.items():
                    info = tarfile.TarInfo(f"{j:08d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return {"matrix_bytes": (folder / "e.npy").stat().st_size,
            "tar_bytes": sum(p.stat().st_size for p in (folder / "tars").iterdir())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--tars", type=int, default=10)
    ap.add_argument("--photo-kb", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "import.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]))))
        return 0
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "python benchmarks/bench_import.py " + " ".join(argv or sys.argv[1:]),
           "rows": args.rows, "dim": args.dim, "samples": args.samples, "tars": args.tars,
           "photo_kb": args.photo_kb}
    with tempfile.TemporaryDirectory() as tmp:
        res.update(write_inputs(Path(tmp), args.rows, args.dim, args.samples, args.tars,
                                args.photo_kb))
        for kind in ("matrix", "webdataset"):
            r = subprocess.run([sys.executable, __file__, "--child", kind, tmp],
                               capture_output=True, text=True, check=False)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            res[kind] = json.loads(r.stdout.strip().splitlines()[-1])
            print(kind, json.dumps(res[kind]), flush=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
