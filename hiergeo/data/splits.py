"""Training data: a feature store (or the demo, or images), labels at four levels, the split.

Everything a run cannot use fails here, before any training, with a message naming what is
wrong: a feature dimension that does not match ``data.feature_dim``, NaN features, missing
coordinates, labels the gazetteer does not know, an empty split.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.errors import InputError
from gazetteer.keys import LEVELS
from gazetteer.validate import check_coordinates

from ..files import one_line
from .labels import entity_ids
from .spatial_split import spatial_split
from .store import FeatureStore

log = logging.getLogger(__name__)


#: Rows of a store's index read at a time (memory while labelling: this many rows' strings).
INDEX_BATCH = 262_144


class DataError(ValueError):
    """The data cannot be trained on; the message says why and where."""


@dataclass
class Split:
    """One split: inputs, locations and entity ids (-1 where a level is missing).

    A split read from a feature store keeps only ``latlon``, ``ids`` and the store's row
    numbers in memory (56 bytes a row); its features are read a batch at a time
    (:class:`~hiergeo.data.rows.StoreFeatures`) and its table (ids, label columns) only when
    asked for (evaluation), from the store's index.
    """

    table_: pd.DataFrame | None    # id, latitude, longitude and any label columns
    latlon: torch.Tensor           # [n, 2] float64 degrees
    ids: torch.Tensor              # [n, 4] int64
    x: object | None = None        # [n, F] features: a tensor or a StoreFeatures
    images: object | None = None   # an ImageInputs (encoder=timm)
    store: Path | None = None      # the feature store the rows come from (lazy table)
    store_rows: np.ndarray | None = None  # their rows in it (None: all)

    def __len__(self) -> int:
        return len(self.latlon)

    @property
    def table(self) -> pd.DataFrame:
        if self.table_ is None:
            self.table_ = read_index_rows(self.store, self.store_rows)
        return self.table_

    def inputs(self, idx) -> torch.Tensor:
        """Inputs of rows ``idx``: features in the store's dtype, or decoded images."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if self.x is not None:
            return self.x[idx]
        return self.images.batch(idx.tolist())

    def all_inputs(self):
        """Every row's inputs as a sequence that reads (or decodes) only the slice asked for:
        the features themselves, or the images a slice at a time."""
        return self.x if self.x is not None else _RowsView(self)


class _RowsView:
    """``len`` and slicing over a split's images (see :meth:`Split.all_inputs`). Read in
    order, a slice at a time (as prediction does), the next slice of the same size is
    decoded in the background while the caller works on this one."""

    def __init__(self, split: Split):
        self.split = split
        self._ahead = None  # ((start, stop), future)
        self._pool = None

    def __len__(self) -> int:
        return len(self.split)

    def _load(self, start: int, stop: int) -> torch.Tensor:
        return self.split.inputs(np.arange(start, stop))

    def __getitem__(self, sl: slice) -> torch.Tensor:
        start, stop, step = sl.indices(len(self))
        if step != 1:
            return self.split.inputs(np.arange(len(self))[sl])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="hiergeo-ahead")
        if self._ahead is not None and self._ahead[0] == (start, stop):
            x = self._ahead[1].result()
        else:
            x = self._load(start, stop)
        nxt = (stop, min(len(self), stop + (stop - start)))
        self._ahead = ((nxt, self._pool.submit(self._load, *nxt)) if nxt[1] > nxt[0]
                       else None)
        return x


@dataclass
class TrainData:
    train: Split
    val: Split
    in_dim: int
    report: dict = field(default_factory=dict)


class ImageInputs:
    """Decoded, preprocessed images by row, loaded per batch by one thread pool (training
    decodes in worker processes instead: :mod:`hiergeo.train.batches`)."""

    def __init__(self, paths: list[str], transform, workers: int = 2):
        self.paths = paths
        self.transform = transform
        self.workers = max(1, int(workers))
        self._pool = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def _one(self, i):
        from .images import load_image

        res = load_image(self.paths[i], getattr(self.transform, "min_side", None))
        if res.image is None:
            raise DataError(f"{self.paths[i]}: {res.reason} (its header was readable when the "
                            "run started); remove it from the data")
        return self.transform(res.image)

    def batch(self, rows: list[int]) -> torch.Tensor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hiergeo-images")
        return torch.stack(list(self._pool.map(self._one, rows)))


def _check_table(table: pd.DataFrame, where: str, row_offset: int = 0) -> None:
    for col in ("latitude", "longitude"):
        if col not in table.columns:
            raise DataError(f"{where}: no {col!r} column (columns: {list(table.columns)})")
    lat = pd.to_numeric(table["latitude"], errors="coerce")
    lon = pd.to_numeric(table["longitude"], errors="coerce")
    try:
        check_coordinates(lat, lon, source=where, row_offset=row_offset)
    except InputError as exc:
        raise DataError(f"{exc}; drop or fix those rows") from None


def _check_labels(report: dict, where: str) -> None:
    unknown = {lvl: report[lvl]["unknown"] for lvl in LEVELS if report[lvl]["unknown"]}
    if unknown:
        raise DataError(
            f"{where}: labels outside the entity set: {unknown} rows per level have keys the "
            "gazetteer does not know. Build the gazetteer with the dataset's own labels "
            "(python -m gazetteer build --dataset TABLE) so its entities cover them.")
    if report["country"]["missing"] == report["rows"]:
        raise DataError(f"{where}: no row has a country label")


def _labels(gz, table: pd.DataFrame, mode: str, where: str, check: bool = True
            ) -> tuple[torch.Tensor, dict]:
    ids, report = entity_ids(gz, table, mode=mode)
    if check:
        _check_labels(report, where)
    arr = np.stack([ids[f"{lvl}_id"].fillna(-1).to_numpy(np.int64) for lvl in LEVELS], axis=1)
    return torch.from_numpy(arr), report


def read_index_rows(store: Path, rows: np.ndarray | None, batch: int | None = None
                    ) -> pd.DataFrame:
    """Rows ``rows`` (None: all) of a store's ``index.parquet``, read a batch at a time so
    that only the rows asked for are kept."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(Path(store) / "index.parquet")
    cols = [c for c in f.schema_arrow.names if c not in ("shard", "row")]
    if rows is None:
        return f.read(columns=cols).to_pandas()
    rows = np.asarray(rows, np.int64)
    order = np.argsort(rows, kind="stable")
    srt, parts, start = rows[order], [], 0
    for b in f.iter_batches(batch_size=batch or INDEX_BATCH, columns=cols):
        lo, hi = np.searchsorted(srt, [start, start + b.num_rows])
        if hi > lo:
            parts.append(b.take(srt[lo:hi] - start).to_pandas())
        start += b.num_rows
    table = (pd.concat(parts, ignore_index=True) if parts
             else f.schema_arrow.empty_table().select(cols).to_pandas())
    out = table.iloc[np.argsort(order, kind="stable")] if len(table) == len(rows) else table
    if len(out) != len(rows):
        raise IndexError(f"{store}: asked for {len(rows)} rows, found {len(out)}")
    return out.reset_index(drop=True)


def _merge_label_reports(reports: list[dict]) -> dict:
    out = {"rows": sum(r["rows"] for r in reports), "source": reports[0]["source"]}
    for lvl in LEVELS:
        out[lvl] = {k: sum(r[lvl][k] for r in reports) for k in ("missing", "unknown")}
    return out


def _check_finite_chunks(x, where: str, rank: int = 0, world: int = 1, ids_of=None,
                         chunk: int = 32_768) -> None:
    """Raise naming the first rows whose features are NaN or infinite; rank ``rank`` of
    ``world`` scans every ``world``-th block only (torchrun stops the other ranks when one
    fails)."""
    for i, s in enumerate(range(0, len(x), chunk)):
        if i % world != rank:
            continue
        block = x[s:s + chunk]
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().numpy() + s
            ids = f", ids {ids_of(rows[:3])}" if ids_of is not None else ""
            raise DataError(f"{where}: {len(rows)} feature vectors contain NaN or inf (rows "
                            f"{rows[:3].tolist()}{ids}, the first found, in rows {s}-"
                            f"{s + len(block) - 1}); recompute them or drop those rows")


def store_features(store: Path, where: str):
    """A feature store's features as a lazy :class:`~hiergeo.data.rows.StoreFeatures` in
    index order (None when the store has no rows), checked against the index's shard
    counts; ``where`` names the store in errors."""
    import pyarrow.parquet as pq

    from .rows import StoreFeatures
    from .store import shard_paths

    shard_col = pq.read_table(Path(store) / "index.parquet", columns=["shard"]).column(
        "shard").to_numpy()
    if not len(shard_col):
        return None
    if np.any(np.diff(shard_col) < 0):
        raise DataError(f"{where}: index.parquet's rows are not in shard order")
    # a shard whose every image was skipped has a file of 0 rows and no index row
    per_shard = np.bincount(shard_col)
    x = StoreFeatures([shard_paths(Path(store), k)["features"] for k in range(len(per_shard))])
    held = np.diff(x.starts)
    if not np.array_equal(held, per_shard):
        k = int(np.flatnonzero(held != per_shard)[0])
        raise DataError(f"{where}: shard {k} holds {held[k]} feature rows, the index "
                        f"names {per_shard[k]}; extract it again")
    return x


def read_store_split(path, cfg, gz, where, max_samples=None, *, check: bool = True
                     ) -> tuple[Split, dict, int]:
    """:func:`_read_store_split`; a store that cannot be read (a truncated index or shard,
    a store.json that is not JSON) is a :class:`DataError` naming it, not a traceback."""
    from safetensors import SafetensorError

    try:
        return _read_store_split(path, cfg, gz, where, max_samples, check=check)
    except DataError:
        raise
    except FileNotFoundError as exc:  # a typo in the path, most likely
        raise DataError(f"{where}: {exc}") from None
    except (ValueError, OSError, SafetensorError) as exc:  # StoreError, pyarrow's, ...
        text = one_line(exc, 300)
        text = text if str(path) in text else f"{path}: {text}"
        raise DataError(f"{where}: cannot read this feature store ({text}); extract it "
                        "again") from None


def _read_store_split(path, cfg, gz, where, max_samples=None, *, check: bool = True
                      ) -> tuple[Split, dict, int]:
    """A feature store as a checked, labelled :class:`Split`, its label report and its
    feature dimension; ``where`` names it in errors.

    Memory does not grow with the store's features: the index is read a batch at a time
    (labels looked up per batch, only ``latlon`` and ``ids`` kept) and the features are
    scanned a block at a time for NaN (split between torchrun's ranks: each scans
    ``1 / WORLD_SIZE`` of the blocks); ``check=False`` skips that scan."""
    import pyarrow.parquet as pq

    store = FeatureStore(path, index=False)
    where = f"{where} ({path})"
    x = store_features(store.path, where)
    idx = pq.ParquetFile(store.path / "index.parquet")
    label_cols = [c for c in idx.schema_arrow.names if c not in ("shard", "row", "id")]
    lat_parts, id_parts, reps, seen = [], [], [], 0
    for b in idx.iter_batches(batch_size=INDEX_BATCH, columns=label_cols):
        t = b.to_pandas()
        if max_samples is not None:
            t = t.iloc[:max(0, max_samples - seen)]
        if len(t) == 0:
            break
        _check_table(t, where, row_offset=seen)  # rows named by their place in the store
        ids, rep = _labels(gz, t, cfg.data.label_mode, where, check=False)
        id_parts.append(ids)
        reps.append(rep)
        lat_parts.append(t[["latitude", "longitude"]].to_numpy(np.float64))
        seen += len(t)
    if seen == 0 or x is None:
        raise DataError(f"{where}: the feature store has no rows")
    rep = _merge_label_reports(reps)
    _check_labels(rep, where)
    if x.dim != store.dim:
        raise DataError(f"{where}: store.json says dim {store.dim}, the shards hold {x.dim}")
    if cfg.data.feature_dim is not None and x.dim != cfg.data.feature_dim:
        raise DataError(f"{where}: features have dimension {x.dim}, but the config says "
                        f"data.feature_dim={cfg.data.feature_dim}")
    rows = None
    if seen < len(x):
        rows = np.arange(seen)
        x = x.subset(rows)
    if check:
        has_id = "id" in idx.schema_arrow.names
        _check_finite_chunks(x, where, int(os.environ.get("RANK", "0")),
                             int(os.environ.get("WORLD_SIZE", "1")),
                             (lambda r: read_index_rows(store.path, r)["id"].tolist())
                             if has_id else None)
    latlon = torch.from_numpy(np.concatenate(lat_parts))
    split = Split(table_=None, latlon=latlon, ids=torch.cat(id_parts), x=x, store=store.path,
                  store_rows=rows)
    return split, rep, x.dim


def _map_bounded(fn, items: list, desc: str, threads: int = 16, chunk: int = 4096) -> list:
    """``[fn(x) for x in items]`` on ``threads`` threads (file system latency, not CPU), a
    chunk at a time so that pending work stays bounded, with a progress bar."""
    from tqdm.auto import tqdm

    out = []
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(items), desc=desc,
                                                     unit="img") as bar:
        for s in range(0, len(items), chunk):
            out.extend(pool.map(fn, items[s:s + chunk]))
            bar.update(len(items[s:s + chunk]))
    return out


def _map_shared(fn, items: list, desc: str) -> list:
    """:func:`_map_bounded`, shared between torchrun's processes when a process group is up:
    each maps every ``world``-th item and the answers are gathered, so every process holds
    the whole list for ``1 / world`` of the work (and all hold the same one)."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return _map_bounded(fn, items, desc)
    rank, world = tdist.get_rank(), tdist.get_world_size()
    parts = [None] * world
    tdist.all_gather_object(parts, _map_bounded(fn, items[rank::world], desc))
    out = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def _decodable(split: Split, where: str) -> tuple[Split, list]:
    """``split`` without the images that fail to decode or to preprocess, and those
    ``(path, reason)``. Evaluation needs every row's prediction, so the held-out images are
    tried once up front, shared between the processes (training skips a failure in its batch
    instead)."""
    from .images import ImageRows

    rows = ImageRows(split.images.paths, split.images.transform)
    why = _map_shared(lambda i: rows[i][2], list(range(len(rows))),
                      f"decoding the {where} images")
    bad = [(p, w) for p, w in zip(split.images.paths, why, strict=True) if w is not None]
    for p, w in bad[:5]:
        log.warning("leaving %s out of the %s split: %s", p, where, w)
    if not bad:
        return split, []
    return _subset(split, np.array([i for i, w in enumerate(why) if w is None])), bad


def _from_images(cfg, gz):
    from ..model.backbones import EMBEDDED, create_backbone
    from .images import probe_image
    from .records import read_records
    from .zips import ZIP_COLUMNS, ImageSources

    # every photo is probed below and the ones that fail are counted in data_report.json, so
    # a share of ids in no zip is reported there rather than refused (ids in none still are)
    records = read_records(cfg.data.images, cfg.data.image_dir,
                           allow_missing=True).reset_index(drop=True)
    if cfg.data.max_samples is not None:
        records = records.iloc[:cfg.data.max_samples].reset_index(drop=True)
    # file paths, or the photos' places in OSV-5M's zips (hiergeo.data.zips)
    paths = list(ImageSources(records))
    why = _map_shared(probe_image, paths, "checking image headers")
    ok = [i for i, w in enumerate(why) if w is None]
    skipped = [(p, w) for p, w in zip(paths, why, strict=True) if w is not None]
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
    inputs = ImageInputs([paths[i] for i in ok], bb.transform(), cfg.hardware.workers)
    table = table.drop(columns=[c for c in ZIP_COLUMNS if c in table.columns])
    latlon = torch.from_numpy(table[["latitude", "longitude"]].to_numpy(np.float64).copy())
    return Split(table_=table, latlon=latlon, ids=ids, images=inputs), rep, bb.dim


def _subset(s: Split, rows: np.ndarray) -> Split:
    """Rows ``rows`` of ``s`` (features and images are views, read when asked for)."""
    rows = np.asarray(rows, np.int64)
    r = torch.from_numpy(rows)
    images = None
    if s.images is not None:
        images = ImageInputs([s.images.paths[i] for i in rows], s.images.transform,
                             s.images.workers)
    x = s.x
    if x is not None:
        x = x.subset(rows) if hasattr(x, "subset") else x[r]
    table = None if s.table_ is None else s.table_.iloc[rows].reset_index(drop=True)
    store_rows = None
    if s.store is not None:
        store_rows = rows if s.store_rows is None else s.store_rows[rows]
    return Split(table_=table, latlon=s.latlon[r], ids=s.ids[r], x=x, images=images,
                 store=s.store, store_rows=store_rows)


def load_data(cfg, gz) -> TrainData:
    """Read, label, check and split the data a config names."""
    report: dict = {}
    if cfg.data.images is not None:
        if cfg.data.val is not None:
            raise DataError("data.val is a feature store, but data.images trains on images "
                            "through the backbone: leave data.val unset (validation cells are "
                            "carved from data.images)")
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
    if val.images is not None:
        val, bad = _decodable(val, "val")
        report["val_undecodable"] = [{"path": str(p), "reason": r} for p, r in bad]
    for name, s in (("train", train), ("val", val)):
        if len(s) == 0:
            raise DataError(f"the {name} split is empty ({report['split']}); give more data, "
                            "or change data.val_fraction / data.split_cell_km / "
                            "data.split_min_km")
    return TrainData(train=train, val=val, in_dim=int(in_dim), report=report)
