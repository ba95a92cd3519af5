"""Geolocate photos with a trained model: :class:`Geolocator` and ``python -m hiergeo.predict``.

::

    python -m hiergeo.predict --model MODEL PHOTOS... [--out predictions.csv] [--topk 5]
        [--map predictions.html] [--batch-size 64] [--device auto] [--workers N]
        [--beams 5,3,1,1] [--backbone-weights PATH | --allow-download] [--part-size 10000]
        [--within FR,DE | --within Bavaria_DE | --within region.geojson]

MODEL is a folder written by ``python -m hiergeo.export`` or a run folder
(``results/<run_id>``). PHOTOS are image files, folders (searched recursively), CSV/Parquet
tables with a ``path`` column (relative to the table's folder; optional ``id``, ``latitude,
longitude``, OSV-5M label columns, and ``credit``, the photo's attribution, kept in the
output), or one or more feature stores (``python -m hiergeo.features``; not mixed with
photos). ``--out`` may be given several times; its suffix picks the format: ``.csv``,
``.parquet`` or ``.geojson``. Photos are predicted ``--part-size`` at a time and each part is
saved as it is done (``<out>.parts/``): after a crash or a kill the same command resumes
(:func:`predict_to_files`).

One row per photo (``results/README.md`` explains every column): the best path's names, keys
and calibrated probabilities per level, the deepest level the model is sure of, the predicted
coordinates, and the top-k paths. A photo's truth is its table's ``latitude, longitude`` or
its EXIF GPS; where there is one, the row also has the error in km and the hits per level
(OSV-5M's: the predicted point reverse-geocoded and compared with the truth's keys), and a
per-country table is written beside the output (``<out>.per_country.csv`` / ``.md``).
Unreadable files are skipped with their reason (``<out>.skipped.csv``); they never stop the
batch.

``--within`` answers inside a region the user already knows (ISO country codes, country
names, OSV-5M region keys, or a GeoJSON polygon; :mod:`hiergeo.predict.within`): the descent
runs over those subtrees alone, probabilities renormalised over what is allowed, the retrieval
memory's neighbours outside ignored. An unknown code is refused with the nearest known ones.

Python::

    from hiergeo import Geolocator
    g = Geolocator.load("models/my-model")
    df = g.predict(["a.jpg", pil_image, "photos/"])
    df = g.predict("photos/", within="FR,DE")   # or ["Bavaria_DE"], "alps.geojson"
    g.predict_features(features)          # encoder features already computed
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.keys import LEVELS

from .data.photos import PhotoRows, collate_photos, collect_photos, is_store, set_gps, wants_gps
from .devices import resolve_device
from .export import ModelFolderError, Portable, backbone_from_meta
from .files import exclusive, output_lock
from .predict import Prediction, predict
from .reports.answers import prediction_table, score_truth, write_outputs

log = logging.getLogger(__name__)

#: queries descended (and searched in the retrieval memory) at a time
QUERY_BLOCK = 2048


@dataclass
class Timings:
    """Seconds spent per stage of the last :meth:`Geolocator.predict` (wall clock, in this
    process): ``decode`` waiting for images (reading, decoding, preprocessing; workers
    overlap it with the rest), ``backbone`` the image model, ``descent`` head, memory and
    beam descent, ``listing`` finding the photos (folders, tables), ``table`` building the
    answer and scoring it against the truth. EXIF GPS positions are read with the images."""

    images: int = 0
    skipped: int = 0
    resumed: int = 0  # photos whose answers came from parts saved by an earlier run
    seconds: float = 0.0
    stages: dict = field(default_factory=lambda: dict.fromkeys(
        ("listing", "decode", "backbone", "descent", "table"), 0.0))

    def report(self) -> dict:
        total = max(self.seconds, 1e-9)
        return {"images": self.images, "skipped": self.skipped, "resumed": self.resumed,
                "seconds": self.seconds,
                "images_per_s": (self.images + self.skipped - self.resumed) / total,
                "stages_s": dict(self.stages),
                "stage_share": {k: v / total for k, v in self.stages.items()}}


# -- the model ----------------------------------------------------------------------------
class Geolocator:
    """A trained model ready to answer: photos (or features) in, a table of paths out.

    Build it with :meth:`load`. Attributes: ``model`` (a
    :class:`~hiergeo.model.geomodel.GeoModel` on ``device``), ``hier``, ``entities``
    (the entity table: key, name, level, ...), ``meta`` (``model.json``), ``memory`` (the
    retrieval memory or None), ``settings`` (how it predicts: ``tau``, ``beams``, ``coords``,
    ``threshold``, ``topk``; the run's, which may be changed, e.g. wider ``beams`` to see
    other countries among the top-k paths), ``timings`` (of the last :meth:`predict`)."""

    def __init__(self, portable: Portable, *, device: str = "auto", backbone_weights=None,
                 allow_download: bool = False):
        from .geometry.spaces import make_space
        from .model.geomodel import GeoModel, create_encoder
        from .model.hierarchy import Hierarchy

        self.meta = portable.meta
        self.device = resolve_device(device)
        m = self.meta["model"]
        self.entities = portable.entities.reset_index(drop=True)
        self._backbone_args = {"weights": backbone_weights, "allow_download": allow_download,
                               "included": portable.backbone, "files": portable.files}
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
        self.model = GeoModel(encoder, space, ent, dim=m["dim"], hidden=m["hidden"],
                              layers=m["layers"], dropout=0.0, train_entities=False,
                              queries=m["queries"])
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
            if "index_obj" in mem or "index_file" in mem:  # ivfpq
                index = (mem["index_obj"] if "index_obj" in mem  # a run's, already built
                         else _read_index(mem, mm, self.meta))  # an export's, mapped
                self.memory = Memory.from_index(index, mem["ids"], mm["k"], mm["temperature"],
                                                device=self.device)
            elif mem.get("unit"):
                self.memory = Memory.from_unit(mem["features"], mem["ids"], mm["k"],
                                               mm["temperature"], device=self.device)
            else:  # a run's exact memory, from its store
                self.memory = Memory(mem["features"], mem["ids"], mm["k"], mm["temperature"],
                                     device=self.device, index="exact")
        self.settings = dict(self.meta["predict"])
        #: how truth positions and predicted points get their keys (the run's eval.geocoder)
        self.geocoder = self.settings.pop("geocoder", "gazetteer")
        self.timings = Timings()

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", backbone_weights=None,
             allow_download: bool = False, check: bool = True, memory: bool = True,
             expect_sha256: str | None = None) -> Geolocator:
        """A model folder (``python -m hiergeo.export``) or a run folder
        (``results/<run_id>``: it needs the run's gazetteer and, for its retrieval memory,
        its training store, whose features it reads again at every load: minutes at
        OSV-5M's size, so export once instead).

        ``check``: verify the folder's files against ``SHA256SUMS`` (reads each file once:
        about 7 s per 10 GB); ``expect_sha256``: the digest of ``SHA256SUMS`` the export
        printed, to pin this exact model; ``memory=False``: predict with the model alone,
        without reading the retrieval memory; ``backbone_weights``: a local weights file for
        the backbone (when the model's reference is not on this disk); ``allow_download``:
        let timm fetch hub weights."""
        from . import export

        path = Path(path)
        if (path / "model.json").exists() or (path / export.SUMS).exists():
            portable = export.read(path, check=check, memory=memory,
                                   expect_sha256=expect_sha256)
        elif (path / "config.yaml").exists():
            portable = export.from_run(path, memory=memory)
            ckpt = (path / "checkpoint.pt").stat()
            portable.meta["checkpoint"] = {"bytes": ckpt.st_size, "mtime_ns": ckpt.st_mtime_ns}
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
            self._backbone = backbone_from_meta(bb, weights=a["weights"],
                                                allow_download=a["allow_download"],
                                                included=a["included"], files=a["files"])
            a["included"] = None  # the model holds the weights now
        return self._backbone

    @property
    def backbone(self):
        """The image backbone (timm), built on first use."""
        return self._get_backbone()

    # -- prediction ------------------------------------------------------------------
    def region(self, within=None):
        """The hierarchy descended for ``within`` (:mod:`hiergeo.predict.within`: codes such
        as ``"FR,DE"`` or ``["Bavaria_DE"]``, a ``.geojson`` file or a shapely polygon); the
        whole model's for None. Unknown codes raise
        :class:`~hiergeo.predict.within.RegionError` naming the nearest known ones."""
        if within is None:
            return self.hier
        from .predict.within import restrict

        return restrict(self.hier, self.entities, within)

    def topk(self, topk: int | None = None) -> int:
        """Paths per photo: ``topk`` (None: the model's setting), never more than the model
        has paths (its entities); below 1, or not a whole number, refused by name."""
        k = self.settings["topk"] if topk is None else topk
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"topk must be a whole number >= 1, not {k!r}")
        return int(min(k, len(self.entities)))

    def _predict(self, f: torch.Tensor, topk: int | None, hier=None) -> Prediction:
        s = self.settings
        return predict(self.model, f, self.hier if hier is None else hier, s["tau"],
                       method="descent",
                       memory=self.memory, from_features=True, batch_size=max(len(f), 1),
                       beams=s["beams"],
                       topk=self.topk(topk), coords=s["coords"], threshold=s["threshold"])

    @torch.no_grad()
    def predict_features(self, x, *, ids=None, truth: pd.DataFrame | None = None,
                         topk: int | None = None, batch_size: int = 4096,
                         within=None) -> pd.DataFrame:
        """The answer table for encoder features ``x [n, in_dim]`` (what the model's encoder
        returns: the backbone's features for a model trained on a feature store). ``ids``
        name the rows (default 0..n-1); ``truth``: see :func:`score_truth`; ``within``: see
        :meth:`region`."""
        want = self.meta["model"]["in_dim"]
        if not isinstance(x, torch.Tensor):  # a NumPy array, a list of rows
            try:
                x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"features must be numbers [n, {want}] (a tensor, a NumPy "
                                 f"array or a list of rows), not {type(x).__name__} ({exc})"
                                 ) from None
        if len(x.shape) != 2 or x.shape[1] != want:
            raise ValueError(f"features must be [n, {want}], got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("features contain NaN or inf")
        hier = self.region(within)
        parts = [self._predict(x[s:s + batch_size].float(), topk, hier)
                 for s in range(0, len(x), batch_size)]
        if not parts:
            raise ValueError("no features to predict")
        pred = Prediction.concat(parts)
        ids = np.arange(len(pred)).astype(str) if ids is None else np.asarray(ids, object)
        table = prediction_table(pred, self.entities, ids, topk=self.topk(topk))
        if truth is not None:
            table = _scored(table, truth, self.geocoder)
        return table

    @torch.no_grad()
    def predict(self, photos, *, topk: int | None = None, batch_size: int = 64,
                workers: int | None = None, progress: bool | None = None,
                score: bool = True, within=None, image_dir=None) -> pd.DataFrame:
        """The answer table for ``photos``: files, folders, photo tables, PIL images, or
        feature stores (see the module docstring). ``within`` restricts the answers to a
        region (:meth:`region`: ``"FR,DE"``, region keys, a polygon). ``image_dir``: the
        photos of tables in OSV-5M's layout (an ``id`` column, no ``path``: ``{id}.jpg``;
        default the table's folder). Skipped photos are in
        ``table.attrs["skipped"]`` (id, path, reason); with ``score`` and any known
        position, the summary and per-country table are in ``table.attrs["summary"]`` and
        ``["per_country"]``. ``self.timings`` has the seconds per stage."""
        t0 = time.perf_counter()
        self.timings = tm = Timings()
        hier = self.region(within)  # bad codes fail before any photo is read
        items = [photos] if isinstance(photos, (str, Path)) or not hasattr(
            photos, "__iter__") else list(photos)
        stores = [Path(p) for p in items if isinstance(p, (str, Path)) and is_store(Path(p))]
        if stores:
            if len(stores) != len(items):
                raise ValueError("feature stores and photos cannot be mixed in one call")
            table, records, skipped = self._predict_stores(stores, topk, hier)
        else:
            t = time.perf_counter()
            photos = collect_photos(items, gps=False, image_dir=image_dir)
            tm.stages["listing"] = time.perf_counter() - t
            with _bar(len(photos), progress) as bar:
                table, records, skipped = self.predict_part(photos, topk=topk,
                                                            batch_size=batch_size,
                                                            workers=workers, bar=bar,
                                                            hier=hier)
        t = time.perf_counter()
        if score:
            table = _scored(table, records, self.geocoder)
        tm.stages["table"] += time.perf_counter() - t
        table.attrs["skipped"] = skipped
        tm.images, tm.skipped = len(table), len(skipped)
        tm.seconds = time.perf_counter() - t0
        return table

    def _predict_stores(self, stores, topk, hier=None):
        from .data.splits import read_index_rows, store_features
        from .data.store import FeatureStore

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
            part = [self._predict(x[s:s + QUERY_BLOCK].float(), topk, hier)
                    for s in range(0, len(x), QUERY_BLOCK)]
            pred = Prediction.concat(part)
            self.timings.stages["descent"] += time.perf_counter() - t
            tables.append(prediction_table(pred, self.entities, index["id"].astype(str),
                                           topk=self.topk(topk)))
            truths.append(index)
        if not tables:
            raise ValueError(f"{', '.join(map(str, stores))}: no rows")
        return (pd.concat(tables, ignore_index=True), pd.concat(truths, ignore_index=True),
                pd.DataFrame(columns=["id", "path", "reason"]))

    def predict_part(self, records: pd.DataFrame, *, topk: int | None = None,
                     batch_size: int = 64, workers: int | None = None, bar=None,
                     hier=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Predict the photos of ``records`` (:func:`collect_photos`' rows, any index),
        unscored: ``(table, truth, skipped)``, ``truth`` the records of the table's rows
        (positions, label columns; no images). Adds to ``self.timings``; ``bar`` (tqdm) is
        advanced per photo; ``hier``: the hierarchy to descend (:meth:`region`; default the
        whole model's)."""
        records = records.reset_index(drop=True)
        table, skipped = self._predict_photos(records, topk, batch_size, workers, bar, hier)
        truth = records.iloc[table.pop("_row").to_numpy()].drop(columns=["image", "reason"])
        truth = truth.reset_index(drop=True)
        if "credit" in truth.columns:  # a photo table's attribution travels with it
            table.insert(2, "credit", truth["credit"].to_numpy(object))
        return table, truth, skipped

    def _loader(self, records, batch_size: int, workers: int | None):
        """Batches of ``records``' photos, decoded and preprocessed for the backbone (with
        their EXIF GPS) by ``workers`` processes (default:
        :func:`hiergeo.devices.loader_workers`)."""
        from torch.utils.data import DataLoader

        from .devices import loader_workers

        # a list, not an array: numpy would turn PIL images into pixel arrays
        sources = [img if img is not None else path for img, path in
                   zip(records["image"], records["path"], strict=True)]
        workers = loader_workers(self.device) if workers is None else workers
        # uint8 crops from the workers, normalised on the device (backbone_batches' prepare)
        rows = PhotoRows(sources, self._get_backbone().transform(uint8=True),
                         wants_gps(records), records["reason"].tolist())
        return DataLoader(rows, batch_size=batch_size,
                          num_workers=workers if len(records) > batch_size else 0,
                          collate_fn=collate_photos, pin_memory=self.device.type == "cuda")

    def _predict_photos(self, records, topk, batch_size, workers, bar, hier=None):
        from .features import backbone_batches

        tm = self.timings
        bb = self._get_backbone()
        bb.model.to(self.device, memory_format=torch.channels_last).eval()
        encode = self.model.encoder if self.meta["model"]["encoder"] == "timm" else bb.features
        loader = self._loader(records, batch_size, workers)
        parts, kept, skipped, waiting = [], [], [], []

        def descend(final: bool = False) -> None:
            # queries go to the descent (and the memory's search) QUERY_BLOCK at a time: an
            # exact memory's search reads all of it whatever the block
            n = sum(len(f) for f in waiting)
            if n and (final or n >= QUERY_BLOCK):
                t = time.perf_counter()
                parts.append(self._predict(torch.cat(waiting), topk, hier))
                waiting.clear()
                tm.stages["descent"] += time.perf_counter() - t

        for f, (_, rows, bad, gps), waited, encoding in backbone_batches(
                loader, encode, self.device, loader.dataset.transform.normalize):
            tm.stages["decode"] += waited
            tm.stages["backbone"] += encoding
            for i, pos in gps.items():
                set_gps(records, i, pos)
            skipped += bad
            if f is not None:
                waiting.append(f)
                kept.append(rows.numpy())
                descend()
            if bar is not None:
                bar.update(len(rows) + len(bad))
        descend(final=True)
        bad_rows = [r for r, _ in skipped]
        skip = pd.DataFrame({"id": records["id"].to_numpy(object)[bad_rows],
                             "path": records["path"].to_numpy(object)[bad_rows],
                             "reason": [w for _, w in skipped]},
                            columns=["id", "path", "reason"])
        for row in skip.itertuples():
            log.warning("skipped %s: %s", row.path or row.id, row.reason)
        t = time.perf_counter()
        k = self.topk(topk)
        if parts:
            rows = np.concatenate(kept)
            table = prediction_table(Prediction.concat(parts), self.entities,
                                     records["id"].to_numpy(object)[rows],
                                     records["path"].to_numpy(object)[rows], topk=k)
        else:
            rows = np.zeros(0, np.int64)
            table = prediction_table(_empty(), self.entities, [], [], topk=k)
        table["_row"] = rows
        tm.stages["table"] += time.perf_counter() - t
        return table, skip


def _scored(table: pd.DataFrame, truth: pd.DataFrame, geocoder: str) -> pd.DataFrame:
    """``table`` scored against ``truth`` (:func:`~hiergeo.reports.answers.score_truth`;
    summary and per-country table in ``attrs``) where any position is known; when scoring
    fails (no gazetteer can be built, say), the answers unscored, with a warning: they are
    never lost to it."""
    if not len(table) or not truth["latitude"].notna().any():
        return table
    try:
        scored, summary, per = score_truth(table, truth, geocoder=geocoder)
    except Exception as exc:  # noqa: BLE001 - whatever it is, keep the answers
        log.warning("the answers are written without their truth: scoring them failed "
                    "(%s: %s)", type(exc).__name__, exc)
        return table
    scored.attrs.update(table.attrs, summary=summary, per_country=per)
    return scored


class PartsMismatch(ValueError):
    """Saved parts of another prediction are in the way; the message says what differs."""


def _bar(total: int, progress: bool | None, initial: int = 0):
    """A progress bar in photos/s (``progress`` None: when stderr is a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="predict", smoothing=0.1,
                disable=progress is False or (progress is None and not sys.stderr.isatty()))


def _timm_encoder(backbone):
    from .model.geomodel import TimmEncoder

    return TimmEncoder(backbone, freeze=True)


def _empty() -> Prediction:
    n = len(LEVELS)
    return Prediction(paths=np.zeros((0, 1, n), np.int64), score=np.zeros((0, 1)),
                      level_prob=np.zeros((0, 1, n)), lat=np.zeros(0), lon=np.zeros(0),
                      confident_level=np.zeros(0, np.int64), comparisons=np.zeros(0, np.int64))


# -- many photos, resumable ---------------------------------------------------------------
PART_SIZE = 10_000
TRUTH = "truth."  # prefix of the truth columns a part keeps beside its answers


def _fingerprint(g: Geolocator, records: pd.DataFrame, topk, part_size: int,
                 within=None) -> dict:
    """What a part's answers depend on: the photos (ids, files' sizes and times, truth), in
    order; the model (its ``SHA256SUMS`` digest, or a run's checkpoint size and time), its
    backbone's weights, its settings and the device type (bf16 on a GPU)."""
    meta = {k: v for k, v in g.meta.items() if k != "created"}

    def stat(q) -> str:
        try:
            st = os.stat(q)
            return f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, TypeError, ValueError):
            return "-"

    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

    # digest() of the photos' lines joined by newlines, fed a line at a time: JSON escapes
    # each character on its own, so the value is the same without a string of every photo
    # (hundreds of MB, three times over, at 5M photos)
    h = hashlib.sha256(b'"')
    for k, (i, q, a, b) in enumerate(zip(records["id"].astype(str), records["path"],
                                         records["latitude"], records["longitude"],
                                         strict=True)):
        line = json.dumps(f"{i}\t{stat(q)}\t{a}\t{b}")[1:-1].encode()
        h.update(b"\\n" + line if k else line)
    h.update(b'"')
    return {"photos": {"n": len(records), "sha256": h.hexdigest()},
            "model": digest(meta), "settings": {**g.settings, "topk": topk,
                                                **({"within": _within_text(within)}
                                                   if within is not None else {})},
            "backbone weights": str(g._backbone_args["weights"]), "device": g.device.type,
            "part size": part_size}


def _within_text(within) -> str:
    """``within`` as text for a fingerprint: the codes, or the polygon's WKT."""
    if hasattr(within, "wkt"):
        return within.wkt
    if isinstance(within, Path) or (isinstance(within, str) and Path(within).is_file()):
        return Path(within).read_text(encoding="utf-8")
    return ",".join(within) if isinstance(within, (list, tuple)) else str(within)


def _open_parts(parts_dir: Path, state: dict, restart: bool) -> None:
    """Make ``parts_dir`` ready for the prediction ``state`` describes: kept when it holds
    this prediction's parts, refused (or with ``restart`` emptied) when another's."""
    import shutil

    from .files import atomic_write_text

    if parts_dir.exists():
        old = parts_dir / "parts.json"
        old = json.loads(old.read_text()) if old.exists() else {}
        differs = [k for k in state if old.get(k) != state[k]]
        if differs and not restart:
            raise PartsMismatch(
                f"{parts_dir} holds the parts of an earlier prediction with other "
                f"{', '.join(differs)}; run the same command as then to resume it, or pass "
                "--restart to discard them")
        if differs:
            log.warning("%s: discarding the parts of an earlier prediction (other %s)",
                        parts_dir, ", ".join(differs))
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parts_dir / "parts.json", json.dumps(state, indent=2) + "\n")


def _save_part(names: tuple[Path, Path], answers: pd.DataFrame, skipped: pd.DataFrame) -> None:
    """One part's answers (with its truth columns) and skipped rows, each written under a
    temporary name and renamed, the answers last: their file marks the part done."""
    from .files import temporary_names

    with temporary_names(*names) as (tmp, tmp_skip):
        skipped.to_parquet(tmp_skip, index=False)
        tmp_skip.replace(names[1])
        answers.to_parquet(tmp, index=False)
        tmp.replace(names[0])


def predict_to_files(g: Geolocator, photos, outs: list[Path], *, topk: int | None = None,
                     batch_size: int = 64, workers: int | None = None,
                     progress: bool | None = None, part_size: int = PART_SIZE,
                     score: bool = True, restart: bool = False, within=None,
                     lock: bool = True, image_dir=None) -> pd.DataFrame:
    """:meth:`Geolocator.predict` for many photos, written to ``outs`` (and the sidecars of
    :func:`write_outputs`), that a crash does not lose: the photos are predicted
    ``part_size`` at a time, each part saved to ``<outs[0]>.parts/`` as it is done (written
    to a temporary name and renamed), so that the same command run again skips the parts
    already there. Parts of other photos, another model, settings or device are refused
    (:class:`PartsMismatch` says what differs) unless ``restart``, which discards them. The
    parts are joined, scored against the truth and written at the end, then removed.
    ``within``: answers restricted to a region (:meth:`Geolocator.region`). ``lock``: hold
    :func:`hiergeo.files.output_lock` while predicting (False: the caller holds it, as the
    command does from before the model loads). ``image_dir``: as in
    :meth:`Geolocator.predict`. Returns the table."""
    outs = [Path(o) for o in outs]
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, not {part_size}")
    hier = g.region(within)  # bad codes fail before any photo is read
    tm = g.timings = Timings()
    t0 = time.perf_counter()
    records = collect_photos(photos, gps=False, image_dir=image_dir)
    tm.stages["listing"] = time.perf_counter() - t0
    if not len(records):
        raise ValueError(f"no photos in {', '.join(map(str, photos))}")
    g._get_backbone()  # a backbone that cannot load fails here, before any part is touched
    parts_dir = Path(f"{outs[0]}.parts")
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    with (exclusive(output_lock(outs[0]), f"the prediction into {outs[0]}") if lock
          else contextlib.nullcontext()):
        return _predict_parts(g, records, outs, parts_dir, hier=hier, topk=topk,
                              batch_size=batch_size, workers=workers, progress=progress,
                              part_size=part_size, score=score, restart=restart,
                              within=within, t0=t0)


def _predict_parts(g: Geolocator, records, outs, parts_dir: Path, *, hier, topk, batch_size,
                   workers, progress, part_size, score, restart, within, t0) -> pd.DataFrame:
    """:func:`predict_to_files` once it holds the lock on its outputs."""
    import shutil

    tm = g.timings
    _open_parts(parts_dir, _fingerprint(g, records, topk, part_size, within), restart)
    n_parts = -(-len(records) // part_size)
    names = [(parts_dir / f"part-{k:05d}.parquet", parts_dir / f"part-{k:05d}.skipped.parquet")
             for k in range(n_parts)]
    done = [k for k in range(n_parts) if names[k][0].exists()]
    if done:
        log.info("%s: %d of %d parts already predicted, resuming", parts_dir, len(done),
                 n_parts)
    tm.resumed = sum(min(part_size, len(records) - k * part_size) for k in done)
    with _bar(len(records), progress, tm.resumed) as bar:
        for k in (k for k in range(n_parts) if k not in done):
            table, truth, skipped = g.predict_part(
                records.iloc[k * part_size:(k + 1) * part_size], topk=topk,
                batch_size=batch_size, workers=workers, bar=bar, hier=hier)
            _save_part(names[k], pd.concat([table, truth.add_prefix(TRUTH)], axis=1), skipped)
    t = time.perf_counter()
    both = pd.concat([pd.read_parquet(a) for a, _ in names], ignore_index=True)
    skipped = pd.concat([pd.read_parquet(b) for _, b in names], ignore_index=True)
    tcols = [c for c in both.columns if c.startswith(TRUTH)]
    truth = both[tcols].rename(columns=lambda c: c[len(TRUTH):])
    table = both.drop(columns=tcols)
    if score:
        table = _scored(table, truth, g.geocoder)
    table.attrs["skipped"] = skipped
    write_outputs(table, outs)
    shutil.rmtree(parts_dir)
    tm.stages["table"] += time.perf_counter() - t
    tm.images, tm.skipped = len(table), len(skipped)
    tm.seconds = time.perf_counter() - t0
    return table


def _read_index(mem: dict, mm: dict, meta: dict):
    """An exported ivfpq memory's index (``memory.faiss``), memory-mapped, checked against
    model.json (rows, width); a file FAISS cannot read is refused by name."""
    from .export import ModelFolderError
    from .predict.memory_index import FaissIndex

    path = mem["index_file"]
    try:
        index = FaissIndex.load(path, mem["index"], rows=mem.get("features"),
                                rows_unit=bool(mem.get("unit")))
    except ValueError as exc:
        raise ModelFolderError(str(exc)) from None
    if index.ntotal != mm["n"] or index.dim != meta["model"]["in_dim"]:
        raise ModelFolderError(f"{path}: {index.ntotal} rows of {index.dim} dimensions, "
                               f"model.json says {mm['n']} of {meta['model']['in_dim']}")
    return index

