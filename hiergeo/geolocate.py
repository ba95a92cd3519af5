"""Geolocate photos with a trained model: :class:`Geolocator` and ``python -m hiergeo.predict``.

::

    python -m hiergeo.predict --model MODEL PHOTOS... [--out predictions.csv] [--topk 5]
        [--map predictions.html] [--batch-size 64] [--device auto] [--workers N]
        [--backbone-weights PATH | --allow-download]

MODEL is a folder written by ``python -m hiergeo.export`` or a run folder
(``results/<run_id>``). PHOTOS are image files, folders (searched recursively), CSV/Parquet
tables with a ``path`` column (relative to the table's folder; optional ``id``, ``latitude,
longitude``, OSV-5M label columns, and ``credit``, the photo's attribution, kept in the
output), or one or more feature stores (``python -m hiergeo.features``; not mixed with
photos). ``--out`` may be given several times;
its suffix picks the format: ``.csv``, ``.parquet`` or ``.geojson``.

One row per photo (:func:`prediction_table` lists the columns): the best path's names, keys
and calibrated probabilities per level, the deepest level the model is sure of, the predicted
coordinates, and the top-k paths. A photo's truth is its table's ``latitude, longitude`` or
its EXIF GPS; where there is one, the row also has the error in km and the hits per level
(OSV-5M's: the predicted point reverse-geocoded and compared with the truth's keys), and a
per-country table is written beside the output (``<out>.per_country.csv`` / ``.md``).
Unreadable files are skipped with their reason (``<out>.skipped.csv``); they never stop the
batch.

Python::

    from hiergeo import Geolocator
    g = Geolocator.load("models/my-model")
    df = g.predict(["a.jpg", pil_image, "photos/"])
    g.predict_features(features)          # encoder features already computed
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS

from .data.images import ImageRows, collate_images
from .data.records import IMAGE_SUFFIXES
from .export import ModelFolderError, Portable, _create_backbone
from .predict import Prediction, predict

log = logging.getLogger(__name__)

SEP = " › "
TABLE_SUFFIXES = {".csv", ".parquet"}
OUT_SUFFIXES = {".csv", ".parquet", ".geojson"}


@dataclass
class Timings:
    """Seconds spent per stage of the last :meth:`Geolocator.predict` (wall clock, in this
    process): ``decode`` waiting for images (reading, decoding, preprocessing; workers
    overlap it with the rest), ``backbone`` the image model, ``descent`` head, memory and
    beam descent, ``listing`` finding the photos (folders, tables), ``table`` building the
    answer and scoring it against the truth. EXIF GPS positions are read with the images."""

    images: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=lambda: dict.fromkeys(
        ("listing", "decode", "backbone", "descent", "table"), 0.0))

    def report(self) -> dict:
        total = max(self.seconds, 1e-9)
        return {"images": self.images, "skipped": self.skipped, "seconds": self.seconds,
                "images_per_s": self.images / total,
                "stages_s": dict(self.stages),
                "stage_share": {k: v / total for k, v in self.stages.items()}}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- inputs -------------------------------------------------------------------------------
def _is_store(p: Path) -> bool:
    return p.is_dir() and (p / "store.json").exists()


def _read_table(path: Path) -> pd.DataFrame:
    """A photo table: ``path`` (relative to the table's folder), optional ``id``,
    ``latitude, longitude`` and OSV-5M label columns."""
    from gazetteer import InputError

    from .data.records import _read

    df = _read(path)
    if "path" not in df.columns:
        raise InputError(f"{path}: no column 'path' (the photos' files); columns are "
                         f"{list(df.columns)}")
    df["path"] = [str(q if Path(q).is_absolute() else path.parent / q) for q in df["path"]]
    df["id"] = df["id"].astype(str) if "id" in df.columns else df["path"]
    for col in ("latitude", "longitude"):
        df[col] = (pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
                   if col in df.columns else np.nan)
    df["truth_source"] = np.where(df["latitude"].notna() & df["longitude"].notna(),
                                  "table", "")
    labels = [c for c in [*OSV5M_KEY_COLUMNS.values(), *OSV5M_PART_COLUMNS.values()]
              if c in df.columns]
    extra = ["credit"] if "credit" in df.columns else []
    return df[["id", "path", "latitude", "longitude", "truth_source", *labels, *extra]]


def collect_photos(items, gps: bool = True) -> pd.DataFrame:
    """One row per photo named by ``items`` (files, folders searched recursively, photo
    tables, PIL images): ``id, path, image, latitude, longitude, truth_source`` (+ label
    columns of tables). ``path`` is None for an image in memory, ``image`` None for a file;
    coordinates are the truth (a table's, else with ``gps`` the file's EXIF GPS), NaN when
    unknown. (:meth:`Geolocator.predict` passes ``gps=False`` and reads EXIF in its image
    workers, so that a million photos start at once.)"""
    from PIL import Image

    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    rows, tables = [], []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            rows.append({"id": f"image-{i}", "path": None, "image": item})
            continue
        p = Path(item)
        if _is_store(p):
            raise ValueError(f"{p} is a feature store: predict stores on their own (or call "
                             "predict_features), not mixed with photos")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                           and f.is_file())
            if not files:
                log.warning("%s: no image files (suffixes %s)", p, sorted(IMAGE_SUFFIXES))
            rows += [{"id": str(f), "path": str(f), "image": None} for f in files]
        elif p.suffix.lower() in TABLE_SUFFIXES:
            tables.append(_read_table(p).assign(image=None))
        else:
            rows.append({"id": str(p), "path": str(p), "image": None})
    files = pd.DataFrame(rows, columns=["id", "path", "image"]).assign(
        latitude=np.nan, longitude=np.nan, truth_source="")
    out = pd.concat([files, *tables], ignore_index=True) if tables else files
    dup = out["id"].duplicated(keep="first")
    if dup.any():  # the same photo named twice (a file and its folder): keep the first
        log.warning("%d photos named more than once (e.g. %s); each is predicted once",
                    int(dup.sum()), out.loc[dup, "id"].iloc[0])
        out = out[~dup].reset_index(drop=True)
    bad = out["latitude"].notna() & ~(out["latitude"].abs().le(90)
                                      & out["longitude"].abs().le(180))
    out.loc[bad, ["latitude", "longitude"]] = np.nan
    out.loc[bad, "truth_source"] = ""
    if gps:
        from .data.exif import read_gps

        for i in np.flatnonzero(_wants_gps(out)):
            _set_gps(out, i, read_gps(out.at[i, "path"]))
    return out


def _wants_gps(records: pd.DataFrame) -> np.ndarray:
    """Rows whose truth may come from EXIF: a file, no position from a table."""
    return (records["path"].notna() & records["latitude"].isna()).to_numpy()


def _set_gps(records: pd.DataFrame, i: int, gps) -> None:
    if gps is not None:
        records.loc[i, ["latitude", "longitude", "truth_source"]] = [gps[0], gps[1], "exif"]


# -- the answer ---------------------------------------------------------------------------
def _readable(names: np.ndarray, path: np.ndarray) -> str:
    """``Bolivia › La Paz › … › El Alto`` for a path of entity ids (placeholder entities,
    which have no name, are left out)."""
    return SEP.join(n for n in (names[i] for i in path if i >= 0) if n)


def prediction_table(pred: Prediction, entities: pd.DataFrame, ids, paths=None,
                     topk: int | None = None) -> pd.DataFrame:
    """One row per query of ``pred`` (entity ids index ``entities``' rows).

    Columns: ``id, path, pred_latitude, pred_longitude, answer, confident_level``; per level
    L (country, region, subregion, city): ``L`` (name), ``L_key`` and ``p_L`` (the calibrated
    probability that the best path is right down to L: the product of its conditional
    probabilities; NaN where it stops above L); per path k of the top-k (``topk`` columns,
    default as many as ``pred`` has; empty where fewer paths exist): ``path_k`` (names),
    ``key_k`` (its deepest entity's key) and ``p_k`` (its probability). ``answer`` says what
    the model is sure of (probability >= the model's threshold), e.g. ``Bolivia, region
    unsure``; ``confident_level`` is that level's name ("" when not even the country)."""
    names = entities["name"].fillna("").astype(str).to_numpy(object)
    keys = entities["key"].astype(str).to_numpy(object)
    n, k = pred.paths.shape[:2]
    prob = pred.path_prob
    top = pred.paths[:, 0, :]
    out = {"id": np.asarray(ids, object),
           "path": np.asarray(paths, object) if paths is not None else np.full(n, None),
           "pred_latitude": pred.lat, "pred_longitude": pred.lon}
    conf = pred.confident_level
    answers = []
    for i in range(n):
        c = int(conf[i])
        if c < 0:
            best = _readable(names, top[i, :1]) or "?"
            answers.append(f"country unsure (best guess {best}, {prob[i, 0, 0]:.0%})")
            continue
        sure = _readable(names, top[i, :c + 1])
        deeper = c + 1 < len(LEVELS) and top[i, c + 1] >= 0
        answers.append(f"{sure}, {LEVELS[c + 1]} unsure" if deeper else sure)
    out["answer"] = np.array(answers, object)
    out["confident_level"] = np.array([LEVELS[c] if c >= 0 else "" for c in conf], object)
    for j, lvl in enumerate(LEVELS):
        e = top[:, j]
        out[lvl] = np.where(e >= 0, names[e.clip(0)], None)
        out[f"{lvl}_key"] = np.where(e >= 0, keys[e.clip(0)], None)
        out[f"p_{lvl}"] = np.where(e >= 0, prob[:, 0, j], np.nan)
    depth = (pred.paths >= 0).sum(-1)                              # [n, k]
    deepest = np.take_along_axis(pred.paths, (depth - 1).clip(0)[..., None], 2)[..., 0]
    p_path = np.take_along_axis(prob, (depth - 1).clip(0)[..., None], 2)[..., 0]
    for r in range(max(k, topk or 0)):
        if r >= k:
            out[f"path_{r + 1}"], out[f"key_{r + 1}"] = np.full(n, None), np.full(n, None)
            out[f"p_{r + 1}"] = np.full(n, np.nan)
            continue
        has = depth[:, r] > 0
        out[f"path_{r + 1}"] = np.array([_readable(names, pred.paths[i, r]) if has[i] else None
                                         for i in range(n)], object)
        out[f"key_{r + 1}"] = np.where(has, keys[deepest[:, r].clip(0)], None)
        out[f"p_{r + 1}"] = np.where(has, p_path[:, r], np.nan)
    return pd.DataFrame(out)


def score_truth(table: pd.DataFrame, truth: pd.DataFrame, gz=None
                ) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Add the truth to a :func:`prediction_table`: ``true_latitude, true_longitude,
    error_km``, per level ``true_L_key`` and ``hit_L`` (OSV-5M's: the predicted point
    reverse-geocoded in ``osv5m`` mode and compared with the truth's key; <NA> where the
    truth has no key at that level, or no position). ``truth`` (same rows): ``latitude,
    longitude`` (NaN: unknown) and optionally OSV-5M's label columns, else its keys are the
    labels of its coordinates. Returns the table, OSV-5M's summary over the rows with a
    truth, and the per-country table (:func:`hiergeo.metrics.per_country`)."""
    from . import metrics
    from .metrics.osv5m import LEVEL_NAMES

    if gz is None:
        import gazetteer

        gz = gazetteer.load()
    has = truth["latitude"].notna().to_numpy() & truth["longitude"].notna().to_numpy()
    t = truth.loc[has].reset_index(drop=True)
    table = table.copy()
    table["true_latitude"] = truth["latitude"].to_numpy(float)
    table["true_longitude"] = truth["longitude"].to_numpy(float)
    km = np.full(len(table), np.nan)
    km[has] = metrics.haversine_km(table["pred_latitude"].to_numpy()[has],
                                   table["pred_longitude"].to_numpy()[has],
                                   t["latitude"].to_numpy(float), t["longitude"].to_numpy(float))
    table["error_km"] = km
    if not _has_labels(t):
        lab = gz.label(t["latitude"].to_numpy(float), t["longitude"].to_numpy(float),
                       mode="osv5m")
        t = t.assign(**{OSV5M_KEY_COLUMNS[lvl]: lab[lvl].astype(str).to_numpy(object)
                        for lvl in LEVELS})
    pk = metrics.predicted_keys(table["pred_latitude"].to_numpy()[has],
                                table["pred_longitude"].to_numpy()[has], gz)
    hits = metrics.hits_from_keys(pk, t)
    tkeys = metrics.truth_keys(t)
    for lvl in LEVELS:
        tk = np.full(len(table), None, object)
        tk[has] = tkeys[lvl].to_numpy(object)
        table[f"true_{lvl}_key"] = tk
        hit = pd.array([pd.NA] * len(table), dtype="boolean")
        hit[np.flatnonzero(has)] = hits[LEVEL_NAMES[lvl]].to_numpy()
        table[f"hit_{lvl}"] = hit
    if not has.any():
        return table, {"n": 0}, pd.DataFrame()
    summary = metrics.osv5m_summary(table["pred_latitude"].to_numpy()[has],
                                    table["pred_longitude"].to_numpy()[has], t, hits=hits)
    names = dict(zip(gz.level("country")["key"], gz.level("country")["name"], strict=True))
    per = metrics.per_country(tkeys["country"].to_numpy(object), pk["country"].to_numpy(object),
                              km[has], hits, names)
    return table, summary, per


def _has_labels(t: pd.DataFrame) -> bool:
    """Whether a truth table carries a full set of OSV-5M key or part columns."""
    return (all(c in t.columns for c in OSV5M_KEY_COLUMNS.values())
            or all(c in t.columns for c in OSV5M_PART_COLUMNS.values()))


# -- the model ----------------------------------------------------------------------------
class Geolocator:
    """A trained model ready to answer: photos (or features) in, a table of paths out.

    Build it with :meth:`load`. Attributes: ``model`` (a
    :class:`~hiergeo.model.geolocator.GeoModel` on ``device``), ``hier``, ``entities``
    (the entity table: key, name, level, ...), ``meta`` (``model.json``), ``memory`` (the
    retrieval memory or None), ``settings`` (how it predicts: ``tau``, ``beams``, ``coords``,
    ``threshold``, ``topk``; the run's, which may be changed, e.g. wider ``beams`` to see
    other countries among the top-k paths), ``timings`` (of the last :meth:`predict`)."""

    def __init__(self, portable: Portable, *, device: str = "auto", backbone_weights=None,
                 allow_download: bool = False):
        from .geometry.spaces import make_space
        from .model.geolocator import GeoModel, create_encoder
        from .model.hierarchy import Hierarchy

        self.meta = portable.meta
        self.device = _device(device)
        m = self.meta["model"]
        self.entities = portable.entities.reset_index(drop=True)
        self._backbone_args = {"weights": backbone_weights, "allow_download": allow_download,
                               "included": portable.backbone}
        self._backbone = None
        bb = self.meta.get("backbone")
        if m["encoder"] == "timm":
            if bb is None:
                raise ModelFolderError("model.json: a timm encoder without its backbone")
            encoder = _timm_encoder(self._get_backbone())
        else:
            encoder = create_encoder("features", in_dim=m["in_dim"])
        space = make_space(m["geometry"], m["c"], m["max_radius"], m["sphere_radius"])
        ent = portable.weights["entities"]
        self.model = GeoModel(encoder, space, ent, m["dim"], m["hidden"], m["layers"], 0.0,
                              False, m["queries"])
        state = self.model.state_dict()
        got = dict(portable.weights)
        for k in state:
            if k.startswith("encoder.") or k == "parent_margin":
                got[k] = state[k]  # the backbone is loaded above; margins are for training
        try:
            self.model.load_state_dict(got, strict=True)
        except RuntimeError as exc:
            raise ModelFolderError(f"the weights do not fit the model model.json describes "
                                   f"({exc})") from exc
        self.model.to(self.device).eval()
        self.model.project_entities_()
        self.hier = Hierarchy.from_table(self.entities).to(self.device)
        self.memory = None
        mm = self.meta.get("memory")
        if mm and portable.memory is not None:
            from .predict.memory import Memory

            mem = portable.memory
            build = Memory.from_unit if mem.get("unit") else Memory
            self.memory = build(mem["features"], mem["ids"], mm["k"], mm["temperature"],
                                device=self.device)
        self.settings = dict(self.meta["predict"])
        self.timings = Timings()

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", backbone_weights=None,
             allow_download: bool = False, check: bool = True) -> Geolocator:
        """A model folder (``python -m hiergeo.export``; checked against its checksums
        unless ``check`` is False) or a run folder (``results/<run_id>``, which needs the
        run's gazetteer and, for its retrieval memory, its training store).

        ``backbone_weights``: a local weights file for the backbone (when the model's own
        reference is not on this disk); ``allow_download``: let timm fetch hub weights."""
        from . import export

        path = Path(path)
        if (path / "model.json").exists() or (path / export.SUMS).exists():
            portable = export.read(path, check=check)
        elif (path / "config.yaml").exists():
            portable = export.from_run(path)
        else:
            raise ModelFolderError(f"{path}: neither a model folder (model.json, from python "
                                   "-m hiergeo.export) nor a run folder (config.yaml)")
        return cls(portable, device=device, backbone_weights=backbone_weights,
                   allow_download=allow_download)

    # -- the backbone ----------------------------------------------------------------
    def _get_backbone(self):
        if self._backbone is None:
            bb = self.meta.get("backbone")
            if bb is None:
                raise ModelFolderError(
                    "this model was trained on features of unknown origin (no feature store "
                    "with a backbone, e.g. the synthetic demo): it predicts from features "
                    "(predict_features, or a feature store), not from photos")
            a = self._backbone_args
            self._backbone = _create_backbone(bb, weights=a["weights"],
                                              allow_download=a["allow_download"],
                                              included=a["included"])
        return self._backbone

    @property
    def backbone(self):
        """The image backbone (timm), built on first use."""
        return self._get_backbone()

    # -- prediction ------------------------------------------------------------------
    def _predict(self, f: torch.Tensor, topk: int | None) -> Prediction:
        s = self.settings
        return predict(self.model, f, self.hier, s["tau"], method="descent",
                       memory=self.memory, from_features=True, beams=s["beams"],
                       topk=topk or s["topk"], coords=s["coords"], threshold=s["threshold"])

    @torch.no_grad()
    def predict_features(self, x, *, ids=None, truth: pd.DataFrame | None = None,
                         topk: int | None = None, batch_size: int = 4096) -> pd.DataFrame:
        """The answer table for encoder features ``x [n, in_dim]`` (what the model's encoder
        returns: the backbone's features for a model trained on a feature store). ``ids``
        name the rows (default 0..n-1); ``truth``: see :func:`score_truth`."""
        x = torch.as_tensor(x) if not hasattr(x, "shape") else x
        want = self.meta["model"]["in_dim"]
        if len(x.shape) != 2 or x.shape[1] != want:
            raise ValueError(f"features must be [n, {want}], got {tuple(x.shape)}")
        parts = [self._predict(x[s:s + batch_size].float(), topk)
                 for s in range(0, len(x), batch_size)]
        if not parts:
            raise ValueError("no features to predict")
        pred = Prediction.concat(parts)
        ids = np.arange(len(pred)).astype(str) if ids is None else np.asarray(ids, object)
        table = prediction_table(pred, self.entities, ids, topk=topk or self.settings["topk"])
        if truth is not None and truth["latitude"].notna().any():
            table = score_truth(table, truth)[0]
        return table

    @torch.no_grad()
    def predict(self, photos, *, topk: int | None = None, batch_size: int = 64,
                workers: int | None = None, progress: bool | None = None,
                score: bool = True) -> pd.DataFrame:
        """The answer table for ``photos``: files, folders, photo tables, PIL images, or
        feature stores (see the module docstring). Skipped photos are in
        ``table.attrs["skipped"]`` (id, path, reason); with ``score`` and any known
        position, the summary and per-country table are in ``table.attrs["summary"]`` and
        ``["per_country"]``. ``self.timings`` has the seconds per stage."""
        t0 = time.perf_counter()
        self.timings = tm = Timings()
        items = [photos] if isinstance(photos, (str, Path)) or not hasattr(
            photos, "__iter__") else list(photos)
        stores = [Path(p) for p in items if isinstance(p, (str, Path)) and _is_store(Path(p))]
        if stores:
            if len(stores) != len(items):
                raise ValueError("feature stores and photos cannot be mixed in one call")
            table, records, skipped = self._predict_stores(stores, topk, batch_size)
        else:
            t = time.perf_counter()
            records = collect_photos(items, gps=False)
            tm.stages["listing"] = time.perf_counter() - t
            table, skipped = self._predict_photos(records, topk, batch_size, workers, progress)
            records = records.iloc[table.pop("_row").to_numpy()].reset_index(drop=True)
            if "credit" in records.columns:  # a photo table's attribution travels with it
                table.insert(2, "credit", records["credit"].to_numpy(object))
        t = time.perf_counter()
        if score and len(table) and records["latitude"].notna().any():
            table, summary, per = score_truth(table, records)
            table.attrs["summary"], table.attrs["per_country"] = summary, per
        tm.stages["table"] += time.perf_counter() - t
        table.attrs["skipped"] = skipped
        tm.images, tm.skipped = len(table), len(skipped)
        tm.seconds = time.perf_counter() - t0
        return table

    def _predict_stores(self, stores, topk, batch_size):
        from .data.store import FeatureStore
        from .train.data import read_index_rows, store_features

        tables, truths = [], []
        for p in stores:
            meta = FeatureStore(p, index=False).meta
            bb = self.meta.get("backbone") or {}
            if bb and meta.get("backbone") != bb.get("name"):
                log.warning("%s was extracted with %s, the model's features came from %s",
                            p, meta.get("backbone"), bb.get("name"))
            x = store_features(p, str(p))
            if x is None:
                continue
            index = read_index_rows(p, None)
            t = time.perf_counter()
            part = [self._predict(x[s:s + batch_size * 16].float(), topk)
                    for s in range(0, len(x), batch_size * 16)]
            pred = Prediction.concat(part)
            self.timings.stages["descent"] += time.perf_counter() - t
            tables.append(prediction_table(pred, self.entities, index["id"].astype(str),
                                           topk=topk or self.settings["topk"]))
            truths.append(index)
        if not tables:
            raise ValueError(f"{', '.join(map(str, stores))}: no rows")
        return (pd.concat(tables, ignore_index=True), pd.concat(truths, ignore_index=True),
                pd.DataFrame(columns=["id", "path", "reason"]))

    def _predict_photos(self, records, topk, batch_size, workers, progress):
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from .features import _cpu_count

        tm = self.timings
        bb = self._get_backbone()
        timm_encoder = self.meta["model"]["encoder"] == "timm"
        # channels_last: faster convolutions for convnets such as the embedded one (as the
        # feature extractor does); harmless for ViTs
        bb.model.to(self.device, memory_format=torch.channels_last).eval()
        # a list, not an array: numpy would turn PIL images into pixel arrays
        sources = [img if img is not None else path for img, path in
                   zip(records["image"], records["path"], strict=True)]
        workers = min(4, _cpu_count()) if workers is None else workers
        loader = DataLoader(_PhotoRows(sources, bb.transform(), _wants_gps(records)),
                            batch_size=batch_size,
                            num_workers=workers if len(records) > batch_size else 0,
                            collate_fn=_collate, pin_memory=self.device.type == "cuda")
        cuda = self.device.type == "cuda"
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
                    else torch.autocast("cpu", enabled=False))
        parts, kept, skipped = [], [], []
        bar = tqdm(total=len(records), unit="img", desc="predict",
                   disable=progress is False or (progress is None and not sys.stderr.isatty()))
        it = iter(loader)
        with torch.inference_mode():
            while True:
                t = time.perf_counter()
                try:
                    x, rows, bad, gps = next(it)
                except StopIteration:
                    break
                tm.stages["decode"] += time.perf_counter() - t
                for i, pos in gps.items():
                    _set_gps(records, i, pos)
                skipped += bad
                if x is not None:
                    t = time.perf_counter()
                    x = x.to(self.device, non_blocking=True,
                             memory_format=torch.channels_last)
                    with autocast:
                        f = (self.model.encoder(x) if timm_encoder else bb.features(x)).float()
                    if cuda:
                        torch.cuda.synchronize()
                    tm.stages["backbone"] += time.perf_counter() - t
                    t = time.perf_counter()
                    parts.append(self._predict(f, topk))
                    tm.stages["descent"] += time.perf_counter() - t
                    kept.append(rows.numpy())
                bar.update(len(rows) + len(bad))
        bar.close()
        skip = pd.DataFrame({"id": records["id"].to_numpy(object)[[r for r, _ in skipped]],
                             "path": records["path"].to_numpy(object)[[r for r, _ in skipped]],
                             "reason": [w for _, w in skipped]},
                            columns=["id", "path", "reason"])
        for row in skip.itertuples():
            log.warning("skipped %s: %s", row.path or row.id, row.reason)
        t = time.perf_counter()
        if parts:
            pred = Prediction.concat(parts)
            rows = np.concatenate(kept)
            table = prediction_table(pred, self.entities, records["id"].to_numpy(object)[rows],
                                     records["path"].to_numpy(object)[rows],
                                     topk=topk or self.settings["topk"])
        else:
            table = prediction_table(_empty(), self.entities, [], [],
                                     topk=topk or self.settings["topk"])
            rows = np.zeros(0, np.int64)
        table["_row"] = rows
        tm.stages["table"] += time.perf_counter() - t
        return table, skip


class _PhotoRows(ImageRows):
    """:class:`~hiergeo.data.images.ImageRows` that also reads the EXIF GPS of the rows
    ``want_gps`` marks, in the worker: items ``(image, row, reason, (lat, lon) or None)``."""

    def __init__(self, sources, transform, want_gps):
        super().__init__(sources, transform)
        self.want_gps = want_gps

    def __getitem__(self, i):
        from .data.exif import read_gps

        x, row, why = super().__getitem__(i)
        return x, row, why, read_gps(self.paths[row]) if self.want_gps[row] else None


def _collate(items):
    """:func:`~hiergeo.data.images.collate_images` plus ``{row: (lat, lon)}`` of the GPS
    positions found."""
    x, rows, bad = collate_images([it[:3] for it in items])
    return x, rows, bad, {it[1]: it[3] for it in items if it[3] is not None}


def _timm_encoder(backbone):
    from .model.geolocator import TimmEncoder

    return TimmEncoder(backbone, freeze=True)


def _empty() -> Prediction:
    n = len(LEVELS)
    return Prediction(paths=np.zeros((0, 1, n), np.int64), score=np.zeros((0, 1)),
                      level_prob=np.zeros((0, 1, n)), lat=np.zeros(0), lon=np.zeros(0),
                      confident_level=np.zeros(0, np.int64), comparisons=np.zeros(0, np.int64))


# -- writing ------------------------------------------------------------------------------
def _plain(v):
    """A JSON value from a table cell (NaN and <NA> -> null, numpy scalars -> Python)."""
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return None
    if isinstance(v, np.generic):
        return _plain(v.item())
    return v


def to_geojson(table: pd.DataFrame) -> dict:
    """A FeatureCollection: one Point per row at its predicted coordinates, every column a
    property."""
    feats = []
    for rec in table.to_dict(orient="records"):
        props = {k: _plain(v) for k, v in rec.items()}
        feats.append({"type": "Feature", "geometry": {
            "type": "Point", "coordinates": [props["pred_longitude"], props["pred_latitude"]]},
            "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    """Write ``table`` as CSV, Parquet or GeoJSON by ``out``'s suffix (atomically)."""
    from .data.store import atomic_write_text, temporary_names

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise ValueError(f"{out}: the output's suffix must be one of {sorted(OUT_SUFFIXES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    plain = table.copy()
    plain.attrs = {}
    if suffix == ".geojson":
        atomic_write_text(out, json.dumps(to_geojson(plain), ensure_ascii=False,
                                          allow_nan=False) + "\n")
        return out
    with temporary_names(out) as (tmp,):
        if suffix == ".csv":
            plain.to_csv(tmp, index=False, encoding="utf-8")
        else:
            plain.to_parquet(tmp, index=False)
        tmp.replace(out)
    return out


# -- command line -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hiergeo.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="model folder (python -m hiergeo.export) or run folder")
    ap.add_argument("photos", nargs="+", help="photos, folders, photo tables or feature stores")
    ap.add_argument("--out", action="append", default=None,
                    help="output file, .csv/.parquet/.geojson; repeat for several "
                    "(default predictions.csv)")
    ap.add_argument("--topk", type=int, default=None, help="paths per photo (default: the "
                    "model's, 5)")
    ap.add_argument("--beams", help="beam widths per level, e.g. 5,3,1,1 (default: the "
                    "model's; with width 1 at a level, the top-k paths share that level's "
                    "entity)")
    ap.add_argument("--map", help="also write this self-contained HTML map")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None,
                    help="image decoding processes (default: min(4, CPUs))")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--backbone-weights", help="local weights file for the model's backbone")
    w.add_argument("--allow-download", action="store_true",
                   help="let timm fetch the backbone's hub weights")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _beams(text: str) -> list[int]:
    try:
        beams = [int(b) for b in text.split(",")]
    except ValueError:
        beams = []
    if len(beams) != len(LEVELS) or min(beams) < 1:
        raise ValueError(f"--beams needs {len(LEVELS)} widths >= 1 such as 5,3,1,1, not "
                         f"{text!r}")
    return beams


def _write_all(table: pd.DataFrame, outs: list[Path]) -> None:
    for out in outs:
        write_table(table, out)
        log.info("wrote %s (%d rows)", out, len(table))
    base = outs[0].with_suffix("")
    skipped = table.attrs.get("skipped")
    if skipped is not None and len(skipped):
        skipped.to_csv(f"{base}.skipped.csv", index=False)
        log.warning("%d photos skipped: %s.skipped.csv lists them with the reason",
                    len(skipped), base)
    per = table.attrs.get("per_country")
    if per is not None and len(per):
        from .metrics import markdown_table

        per.to_csv(f"{base}.per_country.csv", index=False)
        Path(f"{base}.per_country.md").write_text(markdown_table(per), encoding="utf-8")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from gazetteer import InputError

    from .model.backbones import WeightsError

    outs = [Path(o) for o in (args.out or ["predictions.csv"])]
    for o in outs:
        if o.suffix.lower() not in OUT_SUFFIXES:
            print(f"error: {o}: the output's suffix must be one of {sorted(OUT_SUFFIXES)}",
                  file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        g = Geolocator.load(args.model, device=args.device,
                            backbone_weights=args.backbone_weights,
                            allow_download=args.allow_download)
        if args.beams:
            g.settings["beams"] = _beams(args.beams)
        table = g.predict(args.photos, topk=args.topk, batch_size=args.batch_size,
                          workers=args.workers, progress=not args.no_progress)
        _write_all(table, outs)
        if args.map:
            from .reports import write_map

            write_map(table, args.map)
            log.info("wrote %s", args.map)
    except (InputError, WeightsError, ModelFolderError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"photos": len(table), "skipped": len(table.attrs.get("skipped", [])),
              "outputs": [str(o) for o in outs], **g.timings.report()}
    if "summary" in table.attrs:
        report["truth"] = table.attrs["summary"]
    print(json.dumps(report, indent=2, default=float))
    return 0
