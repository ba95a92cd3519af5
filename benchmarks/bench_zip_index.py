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
Then ``--photos`` JPEGs of 512 x 384 decoded (one process) from files, from a stored zip
and from a deflated one: what reading from zips costs per photo. Last, reading an
OSV-5M-shaped ``train.csv`` of ``--csv-rows`` rows (the 32 published columns) with the columns
``read_osv5m`` keeps and with all of them, projected to 4.9M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
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


CSV_COLUMNS = ["id", "latitude", "longitude", "thumb_original_url", "country", "sequence",
               "captured_at", "lon_bin", "lat_bin", "cell", "region", "sub-region", "city",
               "land_cover", "road_index", "drive_side", "climate", "soil", "dist_sea",
               *[f"quadtree_10_{k}" for k in (5000, 25000, 1000, 50000, 12500, 500, 2500)],
               "unique_region", "unique_sub-region", "unique_city", "unique_country",
               "creator_username", "creator_id"]


def _csv(rows: int) -> dict:
    """Seconds and peak to read an OSV-5M-shaped ``train.csv`` of ``rows`` rows (its 32
    published columns, cells of realistic lengths) as :func:`read_osv5m`'s table read does
    (strings, the columns it keeps) and as it did before (every column); ``held``: the resident
    size the table adds, in a fresh process (Linux ``/proc``)."""
    from hiergeo.data.records import LABEL_COLUMNS

    rng = np.random.default_rng(2)
    cells = {c: "0" for c in CSV_COLUMNS}
    cells.update(thumb_original_url="https://scontent.xx.fbcdn.net/m1/v/t6/" + "x" * 180,
                 country="FR", sequence="a" * 22, captured_at="1561465542000",
                 cell="(61, 24)", region="Ile-de-France", **{"sub-region": "Paris"},
                 city="Paris", dist_sea="0.0751", unique_region="Ile-de-France_FR",
                 **{"unique_sub-region": "Paris_Ile-de-France_FR"},
                 unique_city="Paris_Paris_Ile-de-France_FR", unique_country="FR",
                 creator_username="someone", creator_id="111336221091714.0")
    df = pd.DataFrame({c: [cells[c]] * rows for c in CSV_COLUMNS})
    df["id"] = rng.integers(10**14, 10**16, rows).astype(str)
    df["latitude"] = rng.uniform(-60, 70, rows).round(12)
    df["longitude"] = rng.uniform(-180, 180, rows).round(12)
    wanted = {"id", "latitude", "longitude", *LABEL_COLUMNS}
    out = {"rows": rows, "columns": len(CSV_COLUMNS)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        df.to_csv(path, index=False)
        out["bytes_per_row"] = round(path.stat().st_size / rows, 1)
        del df
        for name, keep in (("kept_columns", sorted(wanted)), ("all_columns", None)):
            # a fresh process each: pandas keeps strings in Arrow buffers, which tracemalloc
            # does not see; the peak resident size does
            code = textwrap.dedent(f"""
                import time
                from pathlib import Path
                from hiergeo.data.records import _read
                def rss():
                    with open("/proc/self/statm") as f:
                        return int(f.read().split()[1]) * 4096 / 2**20
                base = rss()
                keep = {keep!r}
                t = time.perf_counter()
                df = _read(Path({str(path)!r}), usecols=None if keep is None
                           else (lambda c: c in keep))
                sec = time.perf_counter() - t
                print(sec, rss() - base)
            """)
            got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()
            out[f"{name}_seconds"] = round(float(got[0]), 2)
            out[f"{name}_held_MiB"] = round(float(got[1]), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=50_000)
    ap.add_argument("--photos", type=int, default=300,
                    help="512 x 384 JPEGs decoded from a zip and from files, for the rates")
    ap.add_argument("--csv-rows", type=int, default=300_000,
                    help="rows of the OSV-5M-shaped train.csv whose reading is measured")
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
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "members": n,
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
    csv = _csv(args.csv_rows)
    k = 4_900_000 / args.csv_rows
    csv["projected_osv5m_train"] = {
        "note": f"projected, not measured: x {k:.0f} rows (4.9M); linear in rows",
        **{key: round(v * k, 0) for key, v in csv.items()
           if key.endswith(("_seconds", "_MiB"))}}
    res["train_csv"] = csv
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
