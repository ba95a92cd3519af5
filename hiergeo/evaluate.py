"""``python -m hiergeo.evaluate --run results/<run_id> [--data STORE]``: predictions, OSV-5M
metrics, entity top-k accuracy, the per-country table and its pictures.

Writes into the run folder (or ``--out``):

    predictions.parquet   one row per sample: truth, predicted point and path, probabilities
    metrics.json          ("eval" block when run from the command line) every figure below
    per_country.csv/.md   the per-country breakdown, largest countries first
    error_map.png         median error per true country
    error_curve.png       share of samples within each distance

Without ``--data`` the run's own validation split is rebuilt from its config (same seed,
same split) and evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS

from . import metrics
from .config import ConfigError
from .devices import ranks_from_env, resolve_device, use_device
from .files import atomic_write_text, one_line
from .predict import predict

log = logging.getLogger(__name__)


def _truth_table(split, gz) -> pd.DataFrame:
    """Coordinates plus OSV-5M key columns: the data's own, else the keys of its label ids."""
    t = split.table
    cols = ["latitude", "longitude"]
    if all(c in t.columns for c in OSV5M_KEY_COLUMNS.values()):
        return t[cols + list(OSV5M_KEY_COLUMNS.values())].reset_index(drop=True)
    if all(c in t.columns for c in OSV5M_PART_COLUMNS.values()):
        return t[cols + list(OSV5M_PART_COLUMNS.values())].reset_index(drop=True)
    keys = gz.entities["key"].to_numpy(object)
    out = t[cols].reset_index(drop=True).copy()
    ids = split.ids.numpy()
    for j, lvl in enumerate(LEVELS):
        out[OSV5M_KEY_COLUMNS[lvl]] = np.where(ids[:, j] >= 0, keys[ids[:, j].clip(0)], None)
    return out


def calibration_report(pred, truth_ids: np.ndarray) -> dict:
    """Per level, how well the top path's probability of reaching that level (the product
    of its levels' ``P(entity | parent)`` down to it) predicts that its entity is right:
    ECE, reliability bins, accuracy among answers with probability >= 0.5."""
    from .predict.calibration import reliability

    conf = pred.path_prob[:, 0, :]
    out = {}
    for j, lvl in enumerate(LEVELS):
        present = truth_ids[:, j] >= 0
        correct = pred.paths[:, 0, j] == truth_ids[:, j]
        out[lvl] = reliability(conf[present, j], correct[present])
    return out


#: where a run keeps its retrieval memory's FAISS index (an ``ivfpq`` memory), and its
#: settings beside it: built once at the end of training, read back (memory-mapped) by
#: evaluation and export instead of being trained again
MEMORY_INDEX_FILE, MEMORY_INDEX_META = "memory.faiss", "memory_index.json"


def _rows_digest(x, n: int = 256, spread: int = 4096) -> str:
    """sha256 of the shape, the first and last ``n`` rows of ``x`` (a tensor or a store
    view) and ``spread`` rows evenly spread between them: a saved index is reused only over
    the rows it was built from (a re-extracted shard in the middle changes it)."""
    import hashlib

    h = hashlib.sha256(str(tuple(x.shape)).encode())
    picks = np.unique(np.linspace(0, len(x) - 1, min(spread, len(x))).astype(np.int64))
    for block in (x[:n], x[max(0, len(x) - n):], x[picks]):
        h.update(block.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def memory_kind(cfg, n: int, d: int) -> str:
    """``eval.memory_index`` resolved for ``n`` rows of ``d`` features."""
    from .predict.memory_index import resolve_kind

    return resolve_kind(cfg.eval.memory_index, n, d, cfg.eval.memory_exact_max_gb)


def _saved_index(cfg, train, saved: Path):
    """The run's saved ivfpq index over ``train``'s rows, or None (absent, over other rows,
    or unreadable: then it is built again, with a warning)."""
    from .predict.memory_index import FaissIndex, default_nprobe

    meta = saved.with_name(MEMORY_INDEX_META)
    if not (saved.exists() and meta.exists()):
        return None
    ev = cfg.eval
    try:
        params = json.loads(meta.read_text(encoding="utf-8"))
        if not (params.get("rows") == len(train.ids) and params.get("dim") == train.x.shape[1]
                and params.get("rows_digest") == _rows_digest(train.x)):
            log.warning("%s was built over other rows than the run's training split: "
                        "building it again", saved)
            return None
        nlist = int(params["nlist"])
        nprobe = min(nlist, ev.memory_nprobe or default_nprobe(nlist))
        return FaissIndex.load(saved, {**params, "nprobe": nprobe,
                                       "refine": ev.memory_refine}, rows=train.x)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSONDecodeError included
        log.warning("the run's saved memory index %s cannot be read (%s): building it again",
                    saved, one_line(exc))
        return None


def _keep_index(index, train, saved: Path) -> bool:
    """Save an ivfpq index in the run (through a temporary file of this host, process and a
    random token); False, with a warning, when the folder cannot take it."""
    import secrets
    import socket

    tmp = saved.with_name(f".{saved.name}.{socket.gethostname()}-{os.getpid()}-"
                          f"{secrets.token_hex(4)}.tmp")
    try:
        index.save(tmp)
        os.replace(tmp, saved)
        atomic_write_text(saved.with_name(MEMORY_INDEX_META), json.dumps(
            {**index.describe(), "rows_digest": _rows_digest(train.x)}, indent=2) + "\n")
        return True
    except (OSError, RuntimeError) as exc:  # a read-only run folder, a full disk
        tmp.unlink(missing_ok=True)
        log.warning("could not keep the memory's index in %s (%s): it will be built again "
                    "when needed", saved.parent, one_line(exc))
        return False


def build_memory(cfg, train, device="cpu", run_dir=None):
    """The retrieval memory (:mod:`hiergeo.predict.memory`) of a run's training split
    ``train``, or None when ``eval.memory`` is off or the encoder is not ``features`` (the
    memory holds encoder features; extracting them for a timm encoder is not done here).
    With ``run_dir``, an ``ivfpq`` index is saved there (:data:`MEMORY_INDEX_FILE`) and a
    saved one over the same rows is read back instead of built again. An ivfpq index that
    cannot be built (faiss missing, too few rows) falls back to exact search, with a
    warning, rather than fail the end of a training run."""
    if not (cfg.eval.memory and cfg.eval.calibrate):
        return None
    if cfg.model.encoder != "features":
        log.info("eval.memory: only with model.encoder=features; predicting without one")
        return None
    from .predict.memory import Memory
    from .predict.memory_index import FaissIndex

    ev = cfg.eval
    kind = memory_kind(cfg, len(train.ids), int(train.x.shape[1]))
    saved = None if run_dir is None else Path(run_dir) / MEMORY_INDEX_FILE
    if saved is not None and kind == "ivfpq":
        index = _saved_index(cfg, train, saved)
        if index is not None:
            log.info("retrieval memory: the run's %s index of %s rows (%s)", index.kind,
                     f"{index.ntotal:,}", saved)
            return Memory.from_index(index, train.ids, ev.memory_k, ev.memory_temperature,
                                     device)
    t0 = time.perf_counter()
    opts = {"exact_max_gb": ev.memory_exact_max_gb, "nprobe": ev.memory_nprobe,
            "refine": ev.memory_refine}
    try:
        mem = Memory(train.x, train.ids, ev.memory_k, ev.memory_temperature, device,
                     index=kind, **opts)
    except (ValueError, ImportError) as exc:
        if kind != "ivfpq" or "NaN" in str(exc):
            raise
        log.warning("the retrieval memory's ivfpq index cannot be built (%s): searching "
                    "exactly instead (every feature in memory, %.2f GiB)", one_line(exc),
                    len(train.ids) * int(train.x.shape[1]) * 2 / 2**30)
        mem = Memory(train.x, train.ids, ev.memory_k, ev.memory_temperature, device,
                     index="exact", **opts)
    mem.build_seconds = time.perf_counter() - t0
    log.info("retrieval memory: %s index of %s rows, %.2f GiB, built in %.0f s",
             mem.index.kind, f"{mem.index.ntotal:,}", mem.index.nbytes / 2**30,
             mem.build_seconds)
    if saved is not None and isinstance(mem.index, FaissIndex):
        _keep_index(mem.index, train, saved)
    return mem


def _predict_kwargs(cfg, method: str, beams) -> dict:
    ev = cfg.eval
    kw = {"topk": max(5, ev.topk), "coords": ev.coords, "threshold": ev.threshold}
    if method == "descent":
        kw["beams"] = list(beams or ev.beams)
    return kw


def predict_split(model, hier, split, cfg, *, method: str = "descent", beams=None,
                  memory=None, neighbours=None, rank: int = 0, world: int = 1):
    """The predictions for ``split`` (rank ``rank`` of ``world``: its contiguous share of the
    rows, in order; None when the share is empty), and the seconds they took. Inputs are
    read or decoded a batch at a time."""
    n = len(split)
    a, b = n * rank // world, n * (rank + 1) // world
    if a == b:
        return None, 0.0
    from .data.splits import _subset

    t0 = time.perf_counter()
    share = split if (a, b) == (0, n) else _subset(split, np.arange(a, b))
    pred = predict(model, share.all_inputs(), hier, cfg.loss.tau, method=method,
                   memory=memory, neighbours=None if neighbours is None else neighbours[a:b],
                   **_predict_kwargs(cfg, method, beams))
    return pred, time.perf_counter() - t0


def evaluate_split(model, hier, split, cfg, gz, out_dir: str | Path, *,
                   method: str = "descent", beams=None, memory=None,
                   neighbours=None, pred=None, predict_seconds=None) -> dict:
    """Predict ``split`` and write every evaluation file into ``out_dir``; returns metrics.
    ``memory``: the run's retrieval memory (:func:`build_memory`; used by descent when the
    model's fitted ``memory_weight`` is not 0); ``neighbours``: its answer for every row of
    ``split`` if already searched (see :func:`hiergeo.predict.predict`); ``pred``: the
    predictions when already made (by several processes: :func:`evaluate_run`), with
    ``predict_seconds``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.eval
    kw = _predict_kwargs(cfg, method, beams)
    if pred is None:
        pred, predict_seconds = predict_split(model, hier, split, cfg, method=method,
                                              beams=beams, memory=memory,
                                              neighbours=neighbours)
    if pred is None:
        raise ValueError("no rows to evaluate")
    if len(pred) != len(split):
        raise ValueError(f"{len(pred)} predictions for {len(split)} rows")
    predict_s = float(predict_seconds or 0.0)
    truth = _truth_table(split, gz)
    geocoder = "reverse_geocoder" if ev.geocoder == "reverse_geocoder" else gz
    names = dict(zip(gz.level("country")["key"], gz.level("country")["name"], strict=True))
    sc = metrics.score_points(pred.lat, pred.lon, truth, geocoder, names)
    hits, summary, km, table = sc.hits, sc.summary, sc.km, sc.per_country
    truth_ids = split.ids.numpy()
    ent = metrics.entity_accuracy(pred.paths, truth_ids)
    active = hier.active.cpu().numpy()
    absent = {lvl: int(((truth_ids[:, j] >= 0) & ~active[truth_ids[:, j].clip(0)]).sum())
              for j, lvl in enumerate(LEVELS)}
    if any(absent.values()):
        log.warning("labels naming entities the model does not have (pruned), per level: %s; "
                    "they count as misses in top1_*/top5_*", absent)
    calib = calibration_report(pred, truth_ids)
    table.to_csv(out_dir / "per_country.csv", index=False)
    (out_dir / "per_country.md").write_text(metrics.markdown_table(table), encoding="utf-8")
    _predictions_frame(pred, split, truth, km, hits, gz).to_parquet(
        out_dir / "predictions.parquet", index=False)
    if ev.maps:
        from .reports import error_curve, error_map, reliability_diagram

        error_map(table, gz, out_dir / "error_map.png")
        error_curve(km, out_dir / "error_curve.png")
        reliability_diagram(calib, out_dir / "reliability.png")
    result = {**summary, **ent, "labels_absent_from_model": absent, "method": method,
              "beams": kw.get("beams"),
              "coords": ev.coords, "predict_seconds": predict_s, "calibration": calib,
              "queries_per_s": len(split) / max(predict_s, 1e-9),
              "mean_comparisons": float(pred.comparisons.mean()),
              "confident_level_share": {
                  lvl: float((pred.confident_level >= j).mean()) for j, lvl in enumerate(LEVELS)}}
    return result


def validation_metrics(model, split, hier, cfg, rows: np.ndarray) -> dict:
    """Top-1 per level from the descent's path and median km, on ``rows`` of ``split``."""
    x = split.inputs(rows)
    pred = predict(model, x, hier, cfg.loss.tau, beams=cfg.eval.beams, topk=1,
                   coords=cfg.eval.coords)
    truth = split.ids[rows].numpy()
    out = {}
    for j, lvl in enumerate(LEVELS):
        present = truth[:, j] >= 0
        hit = pred.paths[:, 0, j] == truth[:, j]
        out[f"val_top1_{lvl}"] = float(hit[present].mean()) if present.any() else float("nan")
    ll = split.latlon[rows].numpy()
    out["val_median_km"] = float(np.median(metrics.haversine_km(pred.lat, pred.lon, ll[:, 0],
                                                        ll[:, 1])))
    return out


@dataclass(frozen=True)
class Calibrated:
    """What :func:`final_calibration` leaves for :func:`final_evaluation`: the run's retrieval
    memory (None without one), the calibration report (None when ``eval.calibrate`` is off),
    and the memory's neighbours of every validation row when the calibration searched them
    all (evaluation reuses them instead of searching again)."""

    memory: object
    temperatures: dict | None
    neighbours: object


def final_calibration(model, hier, data, cfg, out_dir: Path) -> Calibrated:
    """The first half of a run's end: calibration (temperatures, the memory's weights,
    stored in the model, ``calibration.json``) on the validation split
    (:func:`hiergeo.predict.calibration.calibrate`). The trainer saves its checkpoint after
    this, so the stored model carries its calibration before the (long) evaluation starts."""
    from .predict.calibration import calibrate

    memory = build_memory(cfg, data.train, model.entities.device, run_dir=out_dir)
    if not cfg.eval.calibrate:
        return Calibrated(memory=memory, temperatures=None, neighbours=None)
    temperatures, neighbours = calibrate(model, data.val, hier, cfg, out_dir, memory)
    return Calibrated(memory=memory, temperatures=temperatures, neighbours=neighbours)


def final_evaluation(model, hier, data, cfg, gz, out_dir: Path, cal: Calibrated) -> dict:
    """The second half of a run's end: :func:`evaluate_split` on the validation split, with
    the memory and neighbours :func:`final_calibration` left. Returns the figures;
    ``temperatures`` and ``memory`` (whether the retrieval memory was used) among them."""
    result = {} if cal.temperatures is None else {"temperatures": cal.temperatures}
    result.update(evaluate_split(model, hier, data.val, cfg, gz, out_dir, memory=cal.memory,
                                 neighbours=cal.neighbours))
    result["memory"] = cal.memory is not None and model.uses_memory
    return result


def _predictions_frame(pred, split, truth: pd.DataFrame, km, hits, gz) -> pd.DataFrame:
    """``predictions.parquet``: per sample its truth, predicted point and top path's keys,
    their probabilities given the parent, and OSV-5M's hits."""
    keys = gz.entities["key"].to_numpy(object)
    truth_ids = split.ids.numpy()
    rows = {"id": split.table["id"].astype(str).to_numpy() if "id" in split.table else
            np.arange(len(split)).astype(str),
            "latitude": truth["latitude"].to_numpy(float),
            "longitude": truth["longitude"].to_numpy(float),
            "pred_latitude": pred.lat, "pred_longitude": pred.lon, "km": km,
            "confident_level": pred.confident_level, "comparisons": pred.comparisons}
    for j, lvl in enumerate(LEVELS):
        top = pred.paths[:, 0, j]
        rows[f"true_{lvl}"] = np.where(truth_ids[:, j] >= 0, keys[truth_ids[:, j].clip(0)], None)
        rows[f"pred_{lvl}"] = np.where(top >= 0, keys[top.clip(0)], None)
        rows[f"prob_{lvl}"] = pred.level_prob[:, 0, j]
        rows[f"hit_{lvl}"] = hits[metrics.osv5m.LEVEL_NAMES[lvl]].to_numpy()
    return pd.DataFrame(rows)


def load_run(run: str | Path, device: str = "auto"):
    """``(cfg, model, hier, gz)`` of a finished or checkpointed run folder."""
    import yaml

    import gazetteer

    from .config import from_dict
    from .model import checkpoint
    from .model.build import build_model

    run = Path(run)
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(f"{run}: no config.yaml; is this a run folder written by "
                                "python -m hiergeo.train?")
    ckpt = checkpoint.load(run / checkpoint.NAME)
    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")))
    gz = gazetteer.load()
    if ckpt["meta"]["n_entities"] != len(gz.entities):
        raise ValueError(f"{run}: the model has {ckpt['meta']['n_entities']} entities, this "
                         f"gazetteer {len(gz.entities)}: evaluate with the gazetteer it was "
                         "trained on")
    dev = resolve_device(device)
    model, hier = build_model(cfg, gz, ckpt["meta"]["in_dim"], dev, init=False,
                              active=ckpt["active"].numpy())
    model.load_state_dict(ckpt["model"])
    model.project_entities_()
    model.eval()
    return cfg, model, hier, gz


def _process_group(device: str) -> tuple[int, int, str]:
    """``(rank, world, device)``: under torchrun, this process's place and device, with the
    process group started (NCCL on GPUs, gloo on CPUs); else ``(0, 1, device)``."""
    ranks = ranks_from_env()
    world = ranks.world
    try:
        if world == 1:
            return 0, 1, str(resolve_device(device))
        device = str(use_device(device, ranks.local_rank))
    except ValueError as exc:  # no CUDA, a bad spelling: the user's, said in one line
        raise ConfigError(f"--device {device}: {exc}") from None
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "nccl" if device.startswith("cuda") else "gloo")
    return torch.distributed.get_rank(), world, device


def evaluate_run(run: str | Path, *, data: str | Path | None = None, method: str = "descent",
                 beams: list[int] | None = None, coords: str | None = None,
                 out: str | Path | None = None, device: str = "auto",
                 memory: bool = True) -> dict | None:
    """Evaluate a trained run on ``data`` (a feature store; default: the run's validation
    split) and merge the figures into ``<out>/metrics.json`` under ``eval``. Under ``torchrun
    --nproc_per_node G -m hiergeo.evaluate ...`` every process predicts its share of the rows
    (each builds the retrieval memory it needs) and process 0 gathers the predictions and
    writes the files; the others return None."""
    rank, world, device = _process_group(device)
    try:
        return _evaluate_run(run, data, method, beams, coords, out, device, memory, rank,
                             world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _shared_memory(cfg, train, device, run, rank: int, world: int):
    """:func:`build_memory` for each process of a parallel evaluation: an ivfpq index is
    built once, by process 0, which keeps it in the run; the others wait, then read it
    (memory-mapped) instead of each building its own."""
    once = world > 1 and memory_kind(cfg, len(train.ids), int(train.x.shape[1])) == "ivfpq"
    if once and rank > 0:
        torch.distributed.barrier()  # process 0 builds and keeps the index
    try:
        return build_memory(cfg, train, device, run_dir=run)
    finally:
        if once and rank == 0:
            torch.distributed.barrier()


def _evaluate_run(run, data_path, method, beams, coords, out, device, use_memory, rank: int,
                  world: int) -> dict | None:
    from .data.splits import DataError, load_data, read_store_split

    cfg, model, hier, gz = load_run(run, device)
    if coords:
        cfg.eval.coords = coords
    data = None
    if data_path:
        split, _, dim = read_store_split(data_path, cfg, gz, "eval data")
        if dim != model.encoder.dim:
            raise DataError(f"{data_path}: features are {dim}-d, the model takes "
                            f"{model.encoder.dim}-d")
    else:
        data = load_data(cfg, gz)
        split = data.val
    memory = None
    if method == "descent" and use_memory and model.uses_memory:
        try:
            train = (data or load_data(cfg, gz)).train
        except (FileNotFoundError, DataError) as e:
            log.warning("the run's retrieval memory needs its training data (%s): predicting "
                        "with the model alone", e)
        else:
            memory = _shared_memory(cfg, train, model.entities.device, run, rank, world)
    pred, secs = predict_split(model, hier, split, cfg, method=method, beams=beams,
                               memory=memory, rank=rank, world=world)
    if world > 1:
        from .predict import Prediction

        parts = [None] * world if rank == 0 else None
        torch.distributed.gather_object((pred, secs), parts, dst=0)
        if rank != 0:
            return None
        pred = Prediction.concat([p for p, _ in parts if p is not None])
        secs = max(t for _, t in parts)  # wall time: the processes ran side by side
    out = Path(out or run)
    res = evaluate_split(model, hier, split, cfg, gz, out, method=method, beams=beams,
                         memory=memory, pred=pred, predict_seconds=secs)
    path = out / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    allm["eval"] = {**res, "data": str(data_path) if data_path else "run's val split",
                    "memory": memory is not None, "processes": world}
    atomic_write_text(path, json.dumps(allm, indent=2, default=float) + "\n")
    return res


if __name__ == "__main__":  # the command lives in hiergeo.cli
    from hiergeo.cli.evaluate import main

    sys.exit(main())
