"""Training data: a feature store (or the demo, or images), labels at four levels, the split.

Everything a run cannot use fails here, before any training, with a message naming what is
wrong: a feature dimension that does not match ``data.feature_dim``, NaN features, missing
coordinates, labels the gazetteer does not know, an empty split.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from gazetteer.errors import InputError
from gazetteer.keys import LEVELS
from gazetteer.validate import check_coordinates

from ..data.labels import entity_ids
from ..data.split import spatial_split
from ..data.store import FeatureStore

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data cannot be trained on; the message says why and where."""


@dataclass
class Split:
    """One split: inputs, locations and entity ids (-1 where a level is missing)."""

    table: pd.DataFrame            # id, latitude, longitude and any label columns
    latlon: torch.Tensor           # [n, 2] float64 degrees
    ids: torch.Tensor              # [n, 4] int64
    x: torch.Tensor | None = None  # [n, F] features (feature stores)
    images: object | None = None   # an ImageInputs (encoder=timm)

    def __len__(self) -> int:
        return len(self.latlon)

    def inputs(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.x is not None:
            return self.x[idx]
        return self.images.batch(idx.tolist())


@dataclass
class TrainData:
    train: Split
    val: Split
    in_dim: int
    report: dict = field(default_factory=dict)


class ImageInputs:
    """Decoded, preprocessed images by row, loaded per batch by a thread pool."""

    def __init__(self, paths: list[str], transform, workers: int = 2):
        self.paths = paths
        self.transform = transform
        self.workers = max(1, int(workers))

    def _one(self, i):
        from ..data.images import load_image

        res = load_image(self.paths[i])
        if res.image is None:
            raise DataError(f"{self.paths[i]}: {res.reason} (it loaded when the run started)")
        return self.transform(res.image)

    def batch(self, rows: list[int]) -> torch.Tensor:
        with ThreadPoolExecutor(self.workers) as pool:
            return torch.stack(list(pool.map(self._one, rows)))


def _check_table(table: pd.DataFrame, where: str) -> None:
    for col in ("latitude", "longitude"):
        if col not in table.columns:
            raise DataError(f"{where}: no {col!r} column (columns: {list(table.columns)})")
    lat = pd.to_numeric(table["latitude"], errors="coerce")
    lon = pd.to_numeric(table["longitude"], errors="coerce")
    try:
        check_coordinates(lat, lon, source=where)
    except InputError as exc:
        raise DataError(f"{exc}; drop or fix those rows") from None


def _check_features(x: torch.Tensor, table: pd.DataFrame, where: str, expect: int | None):
    if x.ndim != 2:
        raise DataError(f"{where}: features must be [n, dim], got shape {tuple(x.shape)}")
    if expect is not None and x.shape[1] != expect:
        raise DataError(f"{where}: features have dimension {x.shape[1]}, but the config says "
                        f"data.feature_dim={expect}")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten().numpy()
        ids = table["id"].iloc[rows[:3]].tolist() if "id" in table.columns else []
        raise DataError(f"{where}: {len(rows)} feature vectors contain NaN or inf (rows "
                        f"{rows[:3].tolist()}, ids {ids}); recompute them or drop those rows")


def _labels(gz, table: pd.DataFrame, mode: str, where: str) -> tuple[torch.Tensor, dict]:
    ids, report = entity_ids(gz, table, mode=mode)
    unknown = {lvl: report[lvl]["unknown"] for lvl in LEVELS if report[lvl]["unknown"]}
    if unknown:
        raise DataError(
            f"{where}: labels outside the entity set: {unknown} rows per level have keys the "
            "gazetteer does not know. Build the gazetteer with the dataset's own labels "
            "(python -m gazetteer build --dataset TABLE) so its entities cover them.")
    if report["country"]["missing"] == len(table):
        raise DataError(f"{where}: no row has a country label")
    arr = np.stack([ids[f"{lvl}_id"].fillna(-1).to_numpy(np.int64) for lvl in LEVELS], axis=1)
    return torch.from_numpy(arr), report


def read_store_split(path, cfg, gz, where, max_samples=None) -> tuple[Split, dict, int]:
    """A feature store as a checked, labelled :class:`Split`, its label report and its
    feature dimension; ``where`` names it in errors."""
    store = FeatureStore(path)
    table = store.index.reset_index(drop=True)
    x = store.features(torch.float32)
    if max_samples is not None:
        table, x = table.iloc[:max_samples].reset_index(drop=True), x[:max_samples]
    if len(table) == 0:
        raise DataError(f"{where} ({path}): the feature store has no rows")
    _check_table(table, f"{where} ({path})")
    _check_features(x, table, f"{where} ({path})", cfg.data.feature_dim)
    ids, rep = _labels(gz, table, cfg.data.label_mode, f"{where} ({path})")
    latlon = torch.from_numpy(table[["latitude", "longitude"]].to_numpy(np.float64).copy())
    return Split(table=table, latlon=latlon, ids=ids, x=x), rep, store.dim


def _from_images(cfg, gz):
    from tqdm.auto import tqdm

    from ..data.images import load_image
    from ..data.records import read_records
    from ..model.backbones import EMBEDDED, create_backbone

    records = read_records(cfg.data.images, cfg.data.image_dir).reset_index(drop=True)
    if cfg.data.max_samples is not None:
        records = records.iloc[:cfg.data.max_samples].reset_index(drop=True)
    ok, skipped = [], []
    for i, p in enumerate(tqdm(records["path"], desc="checking images", unit="img")):
        res = load_image(p)
        if res.image is not None:
            ok.append(i)
        else:
            skipped.append((p, res.reason))
    for p, why in skipped[:5]:
        log.warning("skipping %s: %s", p, why)
    table = records.iloc[ok].reset_index(drop=True)
    if len(table) == 0:
        raise DataError(f"{cfg.data.images}: no image could be loaded ({len(skipped)} skipped)")
    _check_table(table, str(cfg.data.images))
    ids, rep = _labels(gz, table, cfg.data.label_mode, str(cfg.data.images))
    rep["skipped_images"] = [{"path": str(p), "reason": r} for p, r in skipped]
    bb = create_backbone(cfg.model.backbone or EMBEDDED, weights=cfg.model.weights,
                         allow_download=cfg.model.allow_download,
                         random_weights=cfg.model.random_weights)
    inputs = ImageInputs(table["path"].astype(str).tolist(), bb.transform(),
                         cfg.hardware.workers)
    latlon = torch.from_numpy(table[["latitude", "longitude"]].to_numpy(np.float64).copy())
    return Split(table=table, latlon=latlon, ids=ids, images=inputs), rep, bb.dim


def _subset(s: Split, rows: np.ndarray) -> Split:
    r = torch.from_numpy(np.asarray(rows, np.int64))
    images = None
    if s.images is not None:
        images = ImageInputs([s.images.paths[i] for i in rows], s.images.transform,
                             s.images.workers)
    return Split(table=s.table.iloc[rows].reset_index(drop=True), latlon=s.latlon[r],
                 ids=s.ids[r], x=None if s.x is None else s.x[r], images=images)


def load_data(cfg, gz) -> TrainData:
    """Read, label, check and split the data a config names."""
    report: dict = {}
    if cfg.data.images is not None:
        full, rep, in_dim = _from_images(cfg, gz)
        report["source"] = f"images: {cfg.data.images}"
    else:
        path = cfg.data.train
        if path is None:
            from .demo import demo_store

            path = demo_store(gz, cfg.data.demo)
            report["source"] = f"embedded demo (synthetic features): {path}"
        else:
            report["source"] = f"feature store: {path}"
        full, rep, in_dim = read_store_split(path, cfg, gz, "train data", cfg.data.max_samples)
    report["labels"] = rep
    if cfg.data.val is not None:
        val, vrep, vdim = read_store_split(cfg.data.val, cfg, gz, "val data")
        if vdim != in_dim:
            raise DataError(f"val data ({cfg.data.val}) has feature dimension {vdim}, train "
                            f"data {in_dim}")
        train = full
        report["val_labels"] = vrep
        report["split"] = {"train": len(train), "val": len(val), "dropped": 0}
    else:
        lat, lon = full.latlon[:, 0].numpy(), full.latlon[:, 1].numpy()
        if len(full) < 2:
            raise DataError(f"{len(full)} sample(s): too few to split into train and val")
        try:
            sp = spatial_split(lat, lon, cfg.data.val_fraction, cfg.data.split_min_km,
                               seed=cfg.run.seed, cell_km=cfg.data.split_cell_km)
        except ValueError as exc:
            raise DataError(f"cannot split the training data into train and val: {exc}; "
                            "change data.split_cell_km or set data.val") from None
        train, val = _subset(full, sp["train"]), _subset(full, sp["test"])
        report["split"] = {"method": "cells", "train": len(sp["train"]), "val": len(sp["test"]),
                           "dropped_within_min_km": len(sp["dropped"]),
                           "val_share": len(sp["test"]) / len(full),
                           "cells": sp["cells"], "val_cells": sp["test_cells"],
                           "cell_km": cfg.data.split_cell_km, "min_km": cfg.data.split_min_km}
        log.info("split by %g km cells: %d of %d cells held out (%d samples, %.1f%%); "
                 "%d training samples within %g km of a held-out one dropped",
                 cfg.data.split_cell_km, sp["test_cells"], sp["cells"], len(sp["test"]),
                 100 * len(sp["test"]) / len(full), len(sp["dropped"]),
                 cfg.data.split_min_km)
    for name, s in (("train", train), ("val", val)):
        if len(s) == 0:
            raise DataError(f"the {name} split is empty ({report['split']}); give more data, "
                            "or change data.val_fraction / data.split_cell_km / "
                            "data.split_min_km")
    return TrainData(train=train, val=val, in_dim=int(in_dim), report=report)
