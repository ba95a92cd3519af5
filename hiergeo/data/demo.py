"""The embedded demo: synthetic features around real places, written as a real feature store.

What it is: ``n_places`` GeoNames places drawn at random from the gazetteer, and
``samples_per_place`` points scattered around each (normal, ``jitter_km``), labelled by the
gazetteer in ``osv5m`` mode like OSV-5M's images. Each point gets a feature vector

    x = sum_l a_l u(entity at level l) + b f(lat, lon) + noise

where ``u(e)`` is a fixed random unit vector per entity (drawn from the entity id and the
seed), ``f`` a smooth random field over the sphere (random Fourier features of the 3-D
position, ``field_scale_km`` wavelength) and the noise is Gaussian with unit expected norm.

What it is for: a run that needs no download, exercises every step (feature store, labels,
split, training, descent, metrics, reports) and has a known answer: the planted hierarchy. It
says nothing about accuracy on photos.

The store is cached under ``$HIERGEO_CACHE/demo-<hash of the settings>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.artefact import default_cache_dir
from gazetteer.geo import EARTH_RADIUS_KM, from_xyz, to_xyz
from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS

from .store import write_store

log = logging.getLogger(__name__)
DEMO_VERSION = 1


def _entity_vectors(ids: np.ndarray, dim: int, seed: int, level: int) -> np.ndarray:
    """A fixed random unit vector per entity id (independent of which samples are drawn)."""
    out = np.empty((len(ids), dim), np.float32)
    for i, e in enumerate(ids):
        v = np.random.default_rng([seed, level, int(e)]).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out


def demo_points(gz, cfg) -> pd.DataFrame:
    """Sample locations and their OSV-5M-style labels (``id, latitude, longitude, unique_*``)."""
    rng = np.random.default_rng([cfg.seed, 1])
    places = gz.places
    pick = rng.choice(len(places), size=min(cfg.n_places, len(places)), replace=False)
    lat0 = np.repeat(places["lat"].to_numpy(float)[pick], cfg.samples_per_place)
    lon0 = np.repeat(places["lon"].to_numpy(float)[pick], cfg.samples_per_place)
    # scatter in the local tangent plane, then back onto the sphere
    p = to_xyz(lat0, lon0)
    east = np.cross([0.0, 0.0, 1.0], p)
    east /= np.linalg.norm(east, axis=1, keepdims=True).clip(1e-12)
    north = np.cross(p, east)
    step = rng.standard_normal((len(p), 2)) * (cfg.jitter_km / EARTH_RADIUS_KM)
    q = p + step[:, :1] * east + step[:, 1:] * north
    lat, lon = from_xyz(q / np.linalg.norm(q, axis=1, keepdims=True))
    lab = gz.label(lat, lon, mode="osv5m")
    df = pd.DataFrame({"id": [f"demo-{i:07d}" for i in range(len(lat))],
                       "latitude": lat, "longitude": lon})
    for lvl in LEVELS:
        df[OSV5M_KEY_COLUMNS[lvl]] = lab[lvl].astype(str).to_numpy()
    return df, lab[[f"{lvl}_id" for lvl in LEVELS]].to_numpy(np.int64)


def demo_features(points: pd.DataFrame, ids: np.ndarray, cfg) -> np.ndarray:
    n, dim = len(points), cfg.dim
    rng = np.random.default_rng([cfg.seed, 2])
    x = rng.standard_normal((n, dim)).astype(np.float32) * (cfg.noise / np.sqrt(dim))
    for j, amp in enumerate(cfg.level_amplitude):
        uniq, inv = np.unique(ids[:, j], return_inverse=True)
        x += amp * _entity_vectors(uniq, dim, cfg.seed, j)[inv]
    if cfg.field_amplitude:
        k = 64
        frng = np.random.default_rng([cfg.seed, 3])
        omega = frng.standard_normal((3, k)) * (EARTH_RADIUS_KM / cfg.field_scale_km)
        phase = frng.uniform(0, 2 * np.pi, k)
        proj = frng.standard_normal((k, dim)) / np.sqrt(k)
        xyz = to_xyz(points["latitude"].to_numpy(), points["longitude"].to_numpy())
        f = np.cos(xyz @ omega + phase) * np.sqrt(2) @ proj
        f /= np.sqrt(dim)
        x += (cfg.field_amplitude * f).astype(np.float32)
    return x


def demo_store(gz, cfg, root: str | Path | None = None) -> Path:
    """Write (or reuse) the demo feature store for ``cfg`` (a :class:`DemoConfig`)."""
    settings = dataclasses.asdict(cfg)
    settings["version"] = DEMO_VERSION
    settings["gazetteer"] = gz.meta.get("fingerprint", gz.meta.get("sources", ""))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    out = Path(root) if root else default_cache_dir() / f"demo-{digest.hexdigest()[:12]}"
    if (out / "store.json").exists() and (out / "index.parquet").exists():
        return out
    log.info("writing the demo feature store to %s", out)
    points, ids = demo_points(gz, cfg)
    x = demo_features(points, ids, cfg)
    return write_store(out, torch.from_numpy(x).to(torch.float16), points,
                       backbone="synthetic-demo", weights="none",
                       source="hiergeo.data.demo", demo=settings)
