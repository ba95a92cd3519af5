"""Indexing OSV-5M's zips: the time and memory to read one zip's directory and join it to the
table, and the projection to the published 98 train zips (4.9M photos).

    python benchmarks/bench_zip_index.py [--members 50000] [--out results/benchmarks/zip_index.json]

Writes a zip of ``--members`` small stored entries named like OSV-5M's (``train/<16-digit
id>.jpg``; the entries' content does not matter to the index), then, in this process:
:func:`hiergeo.data.zips.index_zips` (seconds; peak of Python allocations during it, from
``tracemalloc``, in a second run; the index's arrays in bytes) and
:func:`hiergeo.data.zips.attach` for a table
of the same ids (seconds; peak). The projection multiplies by 98 zips (the index is linear in
members; the sort is n log n, so the projected seconds are a slight underestimate) and says so.
Last, ``--photos`` JPEGs of 512 x 384 decoded (one process) from files, from a stored zip
and from a deflated one: what reading from zips costs per photo.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from hiergeo.data.zips import attach, index_zips

TRAIN_ZIPS = 98  # images/train/00.zip ... 97.zip (the dataset's loading script, osv5m.py)


def _peak(fn):
    """``(result, seconds, peak bytes)``: timed on its own (tracemalloc slows allocation-heavy
    code several times), then run again under tracemalloc for the peak."""
    t = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, sec, peak


def _read_decode(n: int) -> dict:
    """Photos/s of :func:`load_image` (decoded for a 224 crop, as the default backbone's
    transform asks) from files, from a stored zip and from a deflated zip: the same JPEGs."""
    import io

    from PIL import Image

    from hiergeo.data.images import load_image
    from hiergeo.data.zips import ImageSources

    rng = np.random.default_rng(1)
    out = {"photos": n, "size": "512x384"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ids = [str(10**15 + i) for i in range(n)]
        (folder / "flat").mkdir()
        for i in ids:
            pix = rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pix).save(buf, format="JPEG", quality=85)
            (folder / "flat" / f"{i}.jpg").write_bytes(buf.getvalue())
        sources = {"files": [str(folder / "flat" / f"{i}.jpg") for i in ids]}
        for name, method in (("stored zip", zipfile.ZIP_STORED),
                             ("deflated zip", zipfile.ZIP_DEFLATED)):
            d = folder / name.replace(" ", "_")
            d.mkdir()
            with zipfile.ZipFile(d / "00.zip", "w", compression=method) as z:
                for i in ids:
                    z.write(folder / "flat" / f"{i}.jpg", f"train/{i}.jpg")
            table = pd.DataFrame({"id": ids, "latitude": 0.0, "longitude": 0.0})
            src = ImageSources(attach(table, index_zips(d), d))
            sources[name] = [src[r] for r in range(n)]
        for name, items in sources.items():
            t = time.perf_counter()
            assert all(load_image(x, 224).ok for x in items)
            out[f"{name}_photos_per_s"] = round(n / (time.perf_counter() - t), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=50_000)
    ap.add_argument("--photos", type=int, default=300,
                    help="512 x 384 JPEGs decoded from a zip and from files, for the rates")
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/zip_index.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    ids = [str(i) for i in rng.integers(10**14, 10**16, args.members)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        with zipfile.ZipFile(folder / "00.zip", "w") as z:
            for i in ids:
                z.writestr(f"train/{i}.jpg", b"\xff\xd8" + b"0" * 62 + b"\xff\xd9")
        write_s = time.perf_counter() - t
        index, index_s, index_peak = _peak(lambda: index_zips(folder))
        table = pd.DataFrame({"id": ids, "latitude": 0.0, "longitude": 0.0})
        _, attach_s, attach_peak = _peak(lambda: attach(table, index, folder))
    n = len(index)
    scale = TRAIN_ZIPS  # one zip -> 98 zips
    res = {
        "machine": platform.processor() or platform.machine(), "members": n,
        "write_zip_seconds": round(write_s, 2),
        "index_seconds": round(index_s, 3), "index_peak_MiB": round(index_peak / 2**20, 1),
        "index_arrays_MiB": round(index.nbytes / 2**20, 2),
        "index_bytes_per_member": round(index.nbytes / n, 1),
        "attach_seconds": round(attach_s, 3), "attach_peak_MiB": round(attach_peak / 2**20, 1),
        "projected_osv5m_train": {
            "note": f"projected, not measured: {TRAIN_ZIPS} zips of {n:,} members each "
                    f"({TRAIN_ZIPS * n:,} photos; OSV-5M's train split has about 4.9M); "
                    "times linear in members (the final sort is n log n: slightly more); the "
                    "peak while indexing is one zip's directory at a time plus the arrays",
            "index_seconds": round(index_s * scale, 1),
            "attach_seconds": round(attach_s * scale, 1),
            "index_arrays_MiB": round(index.nbytes * scale / 2**20, 0),
            "index_peak_MiB": round(index_peak / 2**20 + index.nbytes * (scale - 1) / 2**20, 0),
        },
    }
    res["read_decode"] = _read_decode(args.photos)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
