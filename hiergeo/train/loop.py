"""The training run: config -> data -> model -> loop -> checkpoints + ``results/<run_id>/``.

Determinism: every random draw comes from (seed, epoch) for the data order and (seed, step,
rank) for candidates and dropout, so a run resumed from a checkpoint takes exactly the steps
the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import Config, ConfigError, from_dict
from ..devices import peak_rss_bytes
from ..evaluate import final_calibration, final_evaluation, validation_metrics
from ..files import atomic_write_text
from ..losses import LOSS_CLASSES, Objective
from ..model import checkpoint
from ..model.build import build_model, tree_embedding
from ..model.hierarchy import Hierarchy
from .batches import StepRows, batches, steps_per_epoch
from .optim import Optimisers, build_optimisers
from .processes import Processes
from .run_folder import RunLog, prepare_dir, run_dir_for, run_lock

log = logging.getLogger(__name__)


# -- the run and its setup ------------------------------------------------------------------
def run(cfg: Config | None = None, *, resume: str | Path | None = None) -> dict:
    """Train (or continue) a run; returns its final metrics (also in ``metrics.json``)."""
    if resume is not None:
        d = Path(resume)
        if not (d / "config.yaml").exists():
            raise FileNotFoundError(f"{d}: no config.yaml, so not a run folder to resume")
        hardware = cfg.hardware if cfg is not None else None
        cfg = from_dict(yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")))
        if hardware is not None:
            cfg.hardware = hardware  # hardware may change between sessions, nothing else
        ckpt = checkpoint.load(d / checkpoint.NAME)
    else:
        cfg = cfg or Config()
        d = run_dir_for(cfg)
        ckpt = None
    procs = Processes(cfg)
    try:
        with run_lock(d, procs.main):
            return _run(cfg, d, ckpt, procs)
    finally:
        procs.close()


def _run(cfg: Config, d: Path, ckpt: dict | None, procs: Processes) -> dict:
    """Set up, train, then calibrate and evaluate (process 0) a run in ``d``."""
    prepare_dir(cfg, d, ckpt is not None, procs)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    torch.manual_seed(cfg.run.seed)
    t_start = time.perf_counter()
    _refuse_early(cfg, procs)
    tr = _setup(cfg, d, ckpt, procs)
    peaks = {"setup": peak_rss_bytes()}  # this process's peak RSS once each phase is done
    _train(tr)
    peaks["training"] = peak_rss_bytes()
    tr.model.fold_learnt_tau_(cfg.loss.tau)  # prediction uses the learnt tau (loss.learn)
    result = {"steps": tr.total, "train_seconds": time.perf_counter() - t_start,
              "world_size": procs.world, "run_dir": str(d), "peak_rss_bytes": peaks}
    if procs.world > 1:
        result["ddp_params_in_sync"] = procs.params_in_sync(tr.model)
    if procs.main:
        cal = final_calibration(tr.model, tr.hier, tr.data, cfg, d)
        peaks["calibration"] = peak_rss_bytes()  # the memory's build included
        if cal.memory is not None:
            result["memory_index"] = {**cal.memory.index.describe(),
                                      "build_seconds": cal.memory.build_seconds}
        if cfg.eval.calibrate:
            save_checkpoint(tr, tr.total)  # the stored model carries its calibration
        result.update(final_evaluation(tr.model, tr.hier, tr.data, cfg, tr.gz, d, cal))
        peaks["evaluation"] = peak_rss_bytes()
        result["seconds"] = time.perf_counter() - t_start
        atomic_write_text(d / "metrics.json", json.dumps(result, indent=2, default=float) + "\n")
    procs.wait_for_main()
    return result


def _refuse_early(cfg: Config, procs: Processes) -> None:
    """What the config and the processes alone rule out, before any data is read."""
    if cfg.optim.batch_size < procs.world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is smaller than the "
                          f"{procs.world} processes: every process needs a sample of each batch")
    if procs.world > 1 and cfg.model.entities == "data":
        raise ConfigError("model.entities=data runs in one process (its entity map is called "
                          "outside the DDP wrapper); use model.entities=tree under torchrun")
    if cfg.loss.function not in LOSS_CLASSES:  # a run of a loss registered elsewhere
        raise ConfigError(f"loss.function={cfg.loss.function} is not registered in this "
                          f"process (one of {', '.join(LOSS_CLASSES)}): import the module "
                          "that registers it (@register_loss) before training or resuming")


@dataclass(kw_only=True)
class Training:
    """Everything a run's steps read and change: built by :func:`_setup`, advanced by
    :func:`train_step`, saved by :func:`save_checkpoint`.

    Attributes:
        cfg, d, procs: the run's config, folder and processes.
        gz: the gazetteer; data: the splits (:class:`hiergeo.data.splits.TrainData`).
        model: the :class:`~hiergeo.model.geomodel.GeoModel`; ``train_model`` the module
            the steps call (the model, or its DDP wrapper).
        hier: the entity hierarchy on the run's device.
        optim: the optimisers and schedules (:class:`~hiergeo.train.optim.Optimisers`).
        objective: the loss (:class:`~hiergeo.losses.Objective`), built once.
        step_rows: which rows each step takes; total: the run's steps; step: the next one.
        bf16: forward passes under bfloat16 autocast.
    """

    cfg: Config
    d: Path
    procs: Processes
    gz: object
    data: object
    model: torch.nn.Module
    train_model: torch.nn.Module
    hier: Hierarchy
    optim: Optimisers
    objective: Objective
    step_rows: StepRows
    total: int
    bf16: bool = False
    step: int = 0


def _data_and_model(cfg: Config, ckpt: dict | None, procs: Processes):
    """``(gz, data, model, hier)``: the gazetteer, the splits, and the model on the run's
    device, its entity table embedded from the tree (or left for the checkpoint) and
    restricted to the entities seen in training when ``data.prune_entities``."""
    import gazetteer

    from ..data.splits import load_data

    gz = gazetteer.load()
    if procs.world > 1 and cfg.data.train is None and cfg.data.images is None:
        from ..data.demo import demo_store

        if procs.local_rank == 0:  # one writer of the demo store per machine
            demo_store(gz, cfg.data.demo)
        procs.barrier()
    data = load_data(cfg, gz)
    if procs.main:
        log.info("data: %s; train %d, val %d", data.report["source"], len(data.train),
                 len(data.val))
    active = None
    if cfg.data.prune_entities:
        seen = data.train.ids[data.train.ids >= 0].unique().numpy()
        active = np.zeros(len(gz.entities), bool)
        active[seen] = True
    if ckpt is not None:
        if ckpt["meta"]["in_dim"] != data.in_dim:
            raise ValueError(f"the checkpoint was trained on {ckpt['meta']['in_dim']}-d "
                             f"inputs, the data has {data.in_dim}")
        if ckpt["meta"]["n_entities"] != len(gz.entities):
            raise ValueError("the checkpoint's entity table does not match this gazetteer "
                             f"({ckpt['meta']['n_entities']} vs {len(gz.entities)} entities)")
        active = ckpt["active"].numpy()
    if ckpt is None and procs.world > 1:
        # one process per machine (local rank 0) embeds the tree into the cache, the others
        # read it: a node's cache may not be another node's disk
        if procs.local_rank == 0:
            tree_embedding(cfg, gz)
        procs.barrier()
    model, hier = build_model(cfg, gz, data.in_dim, procs.device, init=ckpt is None,
                              active=active)
    if model.data_entities is not None and ckpt is None:
        _entity_prototypes(model, data, hier)
    with torch.no_grad():  # (a checkpoint, when resuming, overwrites this with its own)
        E0 = model.entities.detach()
        kids = torch.nonzero(hier.parent >= 0).flatten()
        model.parent_margin[kids] = model.space.pair(E0[kids], E0[hier.parent[kids]])
    return gz, data, model, hier


def _entity_prototypes(model, data, hier) -> None:
    """``model.entities=data``: each entity's mean training feature (one streamed pass over
    the training split), then the computed table."""
    from ..model.entity_map import feature_prototypes

    t0 = time.perf_counter()
    proto, counts = feature_prototypes(data.train, hier.parent, hier.depth)
    model.data_entities.set_prototypes_(proto.to(model.entities.device))
    model.refresh_entities_()
    log.info("entity prototypes: %d entities (%d with samples of their own), %d-d, in %.1f s",
             len(proto), int((counts > 0).sum()), proto.shape[1], time.perf_counter() - t0)


def _setup(cfg: Config, d: Path, ckpt: dict | None, procs: Processes) -> Training:
    """Data, model, optimisers and schedules, the checkpoint's state when resuming, the
    DDP wrapper and the loss's candidates; writes ``config.yaml`` and ``data_report.json``."""
    gz, data, model, hier = _data_and_model(cfg, ckpt, procs)
    dev, B = procs.device, cfg.optim.batch_size
    step_rows = StepRows(cfg.run.seed, len(data.train), B, procs.rank, procs.world)
    total = max(1, math.ceil(cfg.optim.epochs * step_rows.spe))
    if cfg.optim.max_steps is not None:
        total = min(total, cfg.optim.max_steps)
    optim = build_optimisers(cfg, model, total, dev)
    if procs.main:  # written before anything below can refuse to start
        atomic_write_text(d / "config.yaml", cfg.to_yaml())
        (d / "data_report.json").write_text(json.dumps(data.report, indent=2, default=str))
    if procs.world > 1 and optim.sparse:
        raise ConfigError("optim.entity_optimizer=sparse cannot run under DDP (its gradient "
                          "buckets cannot hold sparse tensors); use dense or auto")
    objective = Objective.build(cfg.loss, model.space, hier, device=dev,
                                batch=math.ceil(B / procs.world), sparse=optim.sparse,
                                budget_bytes=cfg.hardware.loss_memory_bytes)
    if procs.main and objective.uses_candidates:
        log.info("candidates per level: %s", objective.describe_candidates())
    train_model = model
    if procs.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    tr = Training(cfg=cfg, d=d, procs=procs, gz=gz, data=data, model=model,
                  train_model=train_model, hier=hier, optim=optim, objective=objective,
                  step_rows=step_rows, total=total,
                  bf16=cfg.hardware.precision == "bf16" or (cfg.hardware.precision == "auto"
                                                            and dev.type == "cuda"))
    if ckpt is not None:
        _resume(tr, ckpt)
    return tr


def _resume(tr: Training, ckpt: dict) -> None:
    """Load a checkpoint's model, optimisers, schedules and step into ``tr``."""
    tr.model.load_state_dict(ckpt["model"])
    tr.model.project_entities_()
    tr.optim.load_state_dict(ckpt)
    tr.step = int(ckpt["step"])
    if not tr.procs.main:
        return
    log.info("resuming %s at step %d of %d", tr.d, tr.step, tr.total)
    was, now = int(ckpt["meta"].get("world_size", 1)), tr.procs.world
    n, B, spe = len(tr.data.train), tr.cfg.optim.batch_size, tr.step_rows.spe
    if was != now and steps_per_epoch(n, B, was) != spe:
        log.warning("this run was started with %d processes and resumes with %d: an epoch now "
                    "has %d steps instead of %d, so the data order, the run's length and its "
                    "learning-rate schedule from here differ from an uninterrupted run's", was,
                    now, spe, steps_per_epoch(n, B, was))


def save_checkpoint(tr: Training, at_step: int) -> None:
    """Write ``checkpoint.pt`` (process 0 only): model, optimisers, schedules, step, and what
    the model was built on."""
    if not tr.procs.main:
        return
    gz = tr.gz
    state = {"step": at_step, "model": tr.model.state_dict(), **tr.optim.state_dict(),
             "active": tr.hier.active.cpu(),
             "config": tr.cfg.to_yaml(),
             "meta": {"in_dim": tr.data.in_dim, "n_entities": len(gz.entities),
                      "gazetteer": json.dumps(gz.meta.get("sources", {}), default=str),
                      "total_steps": tr.total, "world_size": tr.procs.world,
                      "saved": _dt.datetime.now().isoformat(timespec="seconds")}}
    checkpoint.save(tr.d / checkpoint.NAME, state)


# -- the loop ------------------------------------------------------------------------------
def _due(step: int, every: int) -> bool:
    """Whether something done every ``every`` steps (0: never, only at the end) is due."""
    return every > 0 and step % every == 0


@contextlib.contextmanager
def _deferred_interrupt():
    """A SIGINT (Ctrl-C) during the block is raised as KeyboardInterrupt at its end, so the
    optimiser steps inside it are applied whole or not at all (main thread only; elsewhere
    signals cannot be caught and the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def train_step(tr: Training, idx: torch.Tensor, x: torch.Tensor) -> dict:
    """One optimisation step on the training rows ``idx`` (inputs ``x``): forward, the loss
    terms, backward, clipping, the optimisers' and schedules' steps. Returns the named loss
    terms; ``tr.step`` advances. Randomness is derived from (seed, step, rank), so a resumed
    run takes exactly the steps an uninterrupted one would."""
    cfg, dev, model = tr.cfg, tr.procs.device, tr.model
    seed = cfg.run.seed * 1_000_003 + tr.step * 101 + tr.procs.rank
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = x.to(dev, non_blocking=True)
    ids, ll = tr.data.train.ids[idx].to(dev), tr.data.train.latlon[idx].to(dev)
    ac = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if tr.bf16
          else contextlib.nullcontext())
    with ac:
        z = tr.train_model(x)
    entities = model.entity_rows if model.data_entities is not None else model.entities
    terms = tr.objective(entities, z.to(torch.float64), ids, ll, gen,
                         parent_margin=model.parent_margin, scalars=model.loss_scalars())
    if not torch.isfinite(terms["loss"]):
        save_checkpoint(tr, tr.step)
        raise FloatingPointError(f"loss is {terms['loss'].item()} at step {tr.step}; the last "
                                 f"good state is in {tr.d / checkpoint.NAME}")
    optim = tr.optim
    optim.zero_grad()
    terms["loss"].backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(optim.head_params, cfg.optim.grad_clip)
        if optim.entities is not None and not model.entities.grad.is_sparse:
            torch.nn.utils.clip_grad_norm_([model.entities], cfg.optim.grad_clip)
    with _deferred_interrupt():  # Ctrl-C never leaves a half-applied update
        optim.step()
        if (optim.entities is not None and optim.sparse
                and (tr.step + 1) % max(1, cfg.optim.stabilize) == 0):
            model.project_entities_()  # what RiemannianAdam(stabilize=) does
        tr.step += 1
    return terms


def _train(tr: Training) -> None:
    """Steps until ``tr.total``, with logging, validation and checkpoints at their
    intervals (``run.log_every``, ``val_every``, ``checkpoint_every``) and at the end; a
    Ctrl-C saves the last whole step."""
    from tqdm.auto import tqdm

    cfg, procs, total = tr.cfg, tr.procs, tr.total
    val_rows = np.sort(np.random.default_rng([cfg.run.seed, 11]).permutation(
        len(tr.data.val))[:cfg.run.val_max])
    logger = RunLog(tr.d, tr.step, cfg.run.tensorboard, procs.main)
    bar = tqdm(total=total, initial=tr.step, desc=f"train {tr.d.name}", unit="step",
               disable=not procs.main)
    window = [time.perf_counter(), 0]  # start of the logging window, samples in it
    tr.model.train()
    inputs = batches(tr.data.train, tr.step_rows, tr.step, total, procs.device,
                     cfg.hardware.workers)
    try:
        while tr.step < total:
            idx, x = next(inputs)
            terms = train_step(tr, idx, x)
            window[1] += len(idx) * procs.world
            bar.update(1)
            row = _log_row(tr, terms, window, bar)
            if _due(tr.step, cfg.run.val_every) and tr.step < total:
                if procs.main:
                    row = {**(row or {"step": tr.step,
                                      "epoch": round(tr.step / tr.step_rows.spe, 4)}),
                           **validation_metrics(tr.model, tr.data.val, tr.hier, cfg, val_rows)}
                    log.info("step %d: %s", tr.step, ", ".join(
                        f"{k} {v:.3g}" for k, v in row.items() if k.startswith("val_")))
                procs.barrier()
            if row is not None:
                logger.write(row)
            if _due(tr.step, cfg.run.checkpoint_every) or tr.step == total:
                save_checkpoint(tr, tr.step)
    except KeyboardInterrupt:
        save_checkpoint(tr, tr.step)  # a whole step's parameters (see _deferred_interrupt)
        log.warning("interrupted at step %d; continue with --resume %s", tr.step, tr.d)
        raise
    finally:
        inputs.close()
        bar.close()
        logger.close()


def _log_row(tr: Training, terms: dict, window: list, bar) -> dict | None:
    """The log row when one is due (every ``run.log_every`` steps and at the end): step,
    epoch, learning rate, samples/s over the window since the last row, the loss terms."""
    if not (_due(tr.step, tr.cfg.run.log_every) or tr.step == tr.total):
        return None
    now = time.perf_counter()
    row = {"step": tr.step, "epoch": round(tr.step / tr.step_rows.spe, 4),
           "lr": tr.optim.lr(),
           "samples_per_s": window[1] / max(now - window[0], 1e-9),
           **{k: float(v.detach()) for k, v in terms.items()}}
    window[:] = [now, 0]
    bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
    return row
