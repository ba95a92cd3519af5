"""Fuzz driver for tests/test_fuzz.py (issue 26): feeds every loader (photo, photo table,
feature store, model folder) mutated inputs and sorts each outcome into

- ``ok``: a correct result (an image that preprocesses to the model's shape, a table of
  rows, a split of finite features, a model whose answers are finite positions);
- ``clear``: a refusal of hiergeo's user-error kinds (ValueError and its subclasses:
  InputError, DataError, StoreError, ModelFolderError; FileNotFoundError) whose message
  names the input;
- ``unexpected``: anything else (another exception, a message naming no file, a wrong
  result).

Run as ``python tests/fuzz_loaders.py WORK MODEL N [SEED]`` under a memory limit and a timeout (the
test does): a hang or an allocation past the limit fails the test as a crash would. Prints
one JSON line: counts per loader and the first unexpected outcomes."""

from __future__ import annotations

import json
import random
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

CLEAR = (ValueError, FileNotFoundError)
REFUSED = "refused"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "insert", "zero", "dup"])
    if kind == "flip" and b:
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "truncate":
        b = b[:rng.randrange(len(b) + 1)]
    elif kind == "insert":
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "zero" and b:
        at = rng.randrange(len(b))
        b[at:at + rng.randint(1, 256)] = bytes(min(256, len(b) - at))
    elif kind == "dup" and b:
        at = rng.randrange(len(b))
        b[at:at] = b[at:at + rng.randint(1, 512)]
    return bytes(b)


def weird_value(rng: random.Random):
    return rng.choice([None, -1, 0, 10**12, 2**63, -(10**9), 1e308, float("nan"), "x", "",
                       [], [1, 2], {"a": 1}, True, 0.5, [10**9] * 4, [-1.0] * 4])


class Tally:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.unexpected: list[str] = []

    def add(self, loader: str, outcome: str, what: str = "") -> None:
        c = self.counts.setdefault(loader, {"ok": 0, "clear": 0, "unexpected": 0})
        c[outcome] += 1
        if outcome == "unexpected" and sum(u.startswith(loader) for u in self.unexpected) < 4:
            self.unexpected.append(f"{loader}: {what}"[:600])

    def judge(self, loader: str, fn, names: tuple[str, ...]) -> None:
        """Run ``fn``; an exception is clear when it is a user-error kind naming one of
        ``names``; ``fn`` returns None for a correct result, :data:`REFUSED` for a refusal
        it made as a value (a photo's reason), else what is wrong."""
        try:
            wrong = fn()
        except CLEAR as exc:
            msg = str(exc)
            if any(n in msg for n in names) and "\n" not in msg.strip():
                self.add(loader, "clear")
            else:
                self.add(loader, "unexpected", f"{type(exc).__name__} not naming the input "
                         f"or not one line: {msg[:300]}")
            return
        except Exception as exc:  # noqa: BLE001 - the point: report any other kind
            tb = traceback.format_exc(limit=-3)
            self.add(loader, "unexpected", f"{type(exc).__name__}: {str(exc)[:200]} | {tb}")
            return
        if wrong == REFUSED:
            self.add(loader, "clear")
        else:
            self.add(loader, "unexpected" if wrong else "ok", wrong or "")


def fuzz_photos(work: Path, n: int, rng: random.Random, tally: Tally) -> None:
    from torchvision import transforms as T

    from hiergeo.data.images import load_image
    from hiergeo.model.backbones import Preprocess

    prep = Preprocess(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                                 T.Normalize([0.5] * 3, [0.5] * 3)]), min_side=256)
    pix = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    bases = {}
    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.gif", "GIF"), ("d.tif", "TIFF"),
                      ("e.webp", "WEBP")):
        p = work / name
        img = Image.fromarray(pix)
        if fmt == "JPEG":
            exif = Image.Exif()
            exif[274] = 6
            img.save(p, fmt, exif=exif.tobytes())
        else:
            img.save(p, fmt)
        bases[name] = p.read_bytes()
    for i in range(n):
        name = rng.choice(sorted(bases))
        p = work / f"m{i}-{name}"
        p.write_bytes(mutate_bytes(bases[name], rng))

        def check(p=p):
            res = load_image(p, min_side=256)
            if not res.ok:
                return REFUSED if isinstance(res.reason, str) and res.reason else "no reason"
            x = prep(res.image)
            if tuple(x.shape) != (3, 224, 224) or not bool(torch.isfinite(x).all()):
                return f"preprocessed to {tuple(x.shape)}"
            return None

        tally.judge("photo", check, (p.name,))
        p.unlink()


def fuzz_tables(work: Path, n: int, rng: random.Random, tally: Tally) -> None:
    from hiergeo.data.photos import collect_photos

    rows = [f"p{i},{i}.jpg,{-40 + i * 3.5},{170 - i * 7.25}" for i in range(20)]
    csv = ("id,path,latitude,longitude\n" + "\n".join(rows) + "\n").encode()
    pq_path = work / "base.parquet"
    pd.read_csv(pd.io.common.BytesIO(csv), dtype=str).to_parquet(pq_path)
    bases = {"t.csv": csv, "t.parquet": pq_path.read_bytes()}
    for i in range(n):
        name = rng.choice(sorted(bases))
        p = work / f"m{i}-{name}"
        data = mutate_bytes(bases[name], rng)
        if name.endswith(".csv") and rng.random() < 0.3:  # text-level damage too
            data = data.replace(b",", rng.choice([b";", b'"', b",,", b"\xff"]), rng.randint(1, 5))
        p.write_bytes(data)

        def check(p=p):
            out = collect_photos([p], gps=False)
            lat, lon = out["latitude"].to_numpy(float), out["longitude"].to_numpy(float)
            if (np.isnan(lat) != np.isnan(lon)).any():
                return "half a position"
            ok = ~np.isnan(lat)
            if (np.abs(lat[ok]) > 90).any() or (np.abs(lon[ok]) > 180).any():
                return "a position off the Earth"
            return None

        tally.judge("table", check, (p.name,))
        p.unlink()


def fuzz_stores(work: Path, n: int, rng: random.Random, tally: Tally) -> None:
    import gazetteer
    from hiergeo.config import Config
    from hiergeo.data.splits import read_store_split
    from hiergeo.data.store import write_store

    places = work / "places.csv"
    places.write_text("lat,lon,name,admin1,admin2,cc\n-44.39,171.25,Timaru,Canterbury,Timaru "
                      "District,NZ\n-43.53,172.63,Christchurch,Canterbury,Christchurch City,NZ"
                      "\n-22.56,17.08,Windhoek,Khomas,,NA\n")
    gz = gazetteer.build(places, boundaries=False)
    lat = np.array([-44.39, -43.53, -22.56] * 10)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(30)], "latitude": lat,
                          "longitude": np.array([171.25, 172.63, 17.08] * 10)})
    base = work / "store"
    write_store(base, torch.randn(30, 8), table, shard_size=12)
    files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    cfg = Config()
    for i in range(n):
        d = work / f"store{i}"
        shutil.copytree(base, d)
        target = d / rng.choice(files)
        if target.name == "store.json" and rng.random() < 0.6:
            meta = json.loads(target.read_text())
            meta[rng.choice(sorted(meta) + ["dim", "format"])] = weird_value(rng)
            target.write_text(json.dumps(meta))
        else:
            target.write_bytes(mutate_bytes(target.read_bytes(), rng))

        def check(d=d):
            split, _, dim = read_store_split(d, cfg, gz, "fuzz")
            x = split.x[0:len(split.x)]
            if not bool(torch.isfinite(x).all()) or x.shape[1] != dim:
                return f"features of shape {tuple(x.shape)} or not finite"
            return None

        tally.judge("store", check, (d.name,))
        shutil.rmtree(d)


def _resum(folder: Path) -> None:
    from gazetteer.sources import file_sha256

    names = [ln.split("  ", 1)[1] for ln in (folder / "SHA256SUMS").read_text().splitlines()]
    (folder / "SHA256SUMS").write_text("".join(f"{file_sha256(folder / n)}  {n}\n"
                                               for n in names))


def _poke(meta: dict, rng: random.Random) -> None:
    """Set one leaf of model.json (any depth) to a weird value."""
    node = meta
    while True:
        keys = sorted(k for k in node if not isinstance(node[k], dict) or node[k])
        if not keys:
            return
        k = rng.choice(keys)
        if isinstance(node[k], dict) and node[k] and rng.random() < 0.8:
            node = node[k]
            continue
        node[k] = weird_value(rng)
        return


def fuzz_models(work: Path, model: Path, n: int, rng: random.Random, tally: Tally) -> None:
    from hiergeo.geolocate import Geolocator

    names = sorted(p.name for p in model.iterdir())
    feats = torch.randn(3, Geolocator.load(model, device="cpu").meta["model"]["in_dim"])
    for i in range(n):
        d = work / f"model{i}"
        shutil.copytree(model, d)
        kind = rng.choice(["json", "json", "json", "bytes", "bytes-unsummed"])
        if kind == "json":
            meta = json.loads((d / "model.json").read_text())
            _poke(meta, rng)
            (d / "model.json").write_text(json.dumps(meta))
        else:
            target = d / rng.choice([x for x in names if x != "SHA256SUMS"] if kind == "bytes"
                                    else names)
            target.write_bytes(mutate_bytes(target.read_bytes(), rng))
        if kind != "bytes-unsummed":
            _resum(d)

        def check(d=d):
            g = Geolocator.load(d, device="cpu")
            t = g.predict_features(feats)
            lat, lon = t["pred_latitude"].to_numpy(float), t["pred_longitude"].to_numpy(float)
            if len(t) != 3 or not (np.abs(lat) <= 90).all() or not (np.abs(lon) <= 180).all():
                return f"answers off the Earth: {lat}, {lon}"
            return None

        tally.judge("model", check, (d.name,))
        shutil.rmtree(d)


def main() -> None:
    work, model, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 26)
    tally = Tally()
    fuzz_photos(work, n, rng, tally)
    fuzz_tables(work, n, rng, tally)
    fuzz_stores(work, n // 2, rng, tally)
    fuzz_models(work, model, n // 2, rng, tally)
    print(json.dumps({"counts": tally.counts, "unexpected": tally.unexpected}))


if __name__ == "__main__":
    main()
