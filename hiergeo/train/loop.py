"""The training run: config -> data -> model -> loop -> checkpoints + ``results/<run_id>/``.

Determinism: every random draw comes from (seed, epoch) for the data order and (seed, step,
rank) for candidates and dropout, so a run resumed from a checkpoint takes exactly the steps
the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from gazetteer.keys import LEVELS

from ..config import Config, ConfigError, from_dict
from ..files import atomic_write_text
from ..losses import GeoWeightedContrastive, parent_hinge
from ..losses.contrastive import block_size
from ..model import checkpoint
from ..model.build import build_model, tree_embedding
from ..model.geomodel import level_query
from ..model.hierarchy import Hierarchy
from .batches import StepRows, batches, steps_per_epoch
from .candidates import CandidateSampler
from .processes import Processes

log = logging.getLogger(__name__)

LOG_COLUMNS = (["step", "epoch", "lr", "samples_per_s", "loss"]
               + [f"loss_{lvl}" for lvl in LEVELS] + ["loss_parent"]
               + [f"val_top1_{lvl}" for lvl in LEVELS] + ["val_median_km"])


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.out) / (cfg.run.id or cfg.preset)


def _prepare_dir(cfg: Config, d: Path, resume: bool, procs: Processes) -> None:
    if resume:
        return
    busy = d.exists() and any((d / f).exists() for f in (checkpoint.NAME, "metrics.json",
                                                          "log.csv"))
    if busy and not cfg.run.overwrite:
        raise FileExistsError(
            f"{d} already holds a run. Continue it with --resume {d}, replace it with "
            f"run.overwrite=true, or pick another folder with run.id=NAME")
    if procs.main:
        if busy:
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    procs.barrier()


# -- the loop ------------------------------------------------------------------------------
def _lr_lambda(cfg: Config, total: int):
    """Linear warm-up over ``optim.warmup`` of the ``total`` steps, then cosine down to
    ``optim.min_lr_ratio``. Depends only on the config and ``total``, so a resumed run
    follows the same schedule."""
    warm = int(round(cfg.optim.warmup * total))
    floor = cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


class _Log:
    """``log.csv`` (appended, flushed per row) and TensorBoard, on the main process."""

    def __init__(self, d: Path, start_step: int, tensorboard: bool, main: bool):
        self.main = main
        self.path = d / "log.csv"
        self.tb = None
        if not main:
            return
        rows = []
        if self.path.exists():  # keep what the checkpoint covers, drop steps after it
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, LOG_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(d / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                log.warning("tensorboard is not installed: logging to log.csv only")

    def write(self, row: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, LOG_COLUMNS).writerow({k: row.get(k, "") for k in LOG_COLUMNS})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def sparse_entities(cfg: Config, device) -> bool:
    """Whether the entity table takes sparse gradients and geoopt's SparseRiemannianAdam:
    ``optim.entity_optimizer`` sparse or dense, or auto = sparse in a single CPU process,
    else dense (DDP cannot reduce sparse gradients, over NCCL or gloo)."""
    if cfg.optim.entity_optimizer == "auto":
        ddp = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        return torch.device(device).type == "cpu" and not ddp
    return cfg.optim.entity_optimizer == "sparse"


def _level_losses(cfg: Config, model, z, ids, latlon, hier, gen, full_levels,
                  sampler: CandidateSampler | None = None, sparse: bool | None = None) -> dict:
    """Named loss terms for one batch (see :mod:`hiergeo.losses`). Levels not in
    ``full_levels`` draw candidates with ``sampler`` (built here when None: slower)."""
    if sparse is None:  # the trainer passes what _setup settled once
        sparse = sparse_entities(cfg, z.device)

    def rows(idx):  # entity points, with a sparse gradient for the sparse optimiser
        return torch.nn.functional.embedding(idx, model.entities, sparse=sparse)

    space = model.space
    if sampler is None:
        sampler = candidate_sampler(cfg, hier, full_levels)
    terms = {}
    total = z.new_zeros((), dtype=torch.float64)
    for j, lvl in enumerate(LEVELS):
        pos = ids[:, j]
        keep = pos >= 0
        keep &= hier.active[pos.clamp_min(0)]
        if cfg.loss.weights[j] == 0 or not bool(keep.any()):  # the weight first: no sync
            continue
        zl, pl, ll = level_query(z, j)[keep], pos[keep], latlon[keep]
        if cfg.loss.function != "geo":
            term = _ablation_loss(cfg, j, space, zl, pl, hier, rows)
        else:
            term = _geo_level_loss(cfg, j, space, zl, pl, ll, hier, rows, full_levels[j],
                                   sampler, gen)
        terms[f"loss_{lvl}"] = term
        total = total + cfg.loss.weights[j] * term
    if cfg.loss.parent_weight > 0 and model.entities.requires_grad:
        kids = torch.unique(ids[:, 1:][ids[:, 1:] >= 0])
        par = hier.parent[kids]
        term = parent_hinge(space, rows(kids), rows(par), model.parent_margin[kids])
        terms["loss_parent"] = term
        total = total + cfg.loss.parent_weight * term
    terms["loss"] = total
    return terms


def candidate_sampler(cfg: Config, hier: Hierarchy, full_levels) -> CandidateSampler | None:
    """The sampler of the geo loss's sampled candidates; None where no level samples
    (``loss.scope=siblings`` takes every sibling, the PML ablations never sample)."""
    if cfg.loss.scope == "level" and cfg.loss.function == "geo" and not all(full_levels):
        return CandidateSampler(hier)
    return None


def _geo_level_loss(cfg: Config, j: int, space, zl, pl, ll, hier: Hierarchy, rows,
                    full: bool, sampler: CandidateSampler | None, gen) -> torch.Tensor:
    """Level ``j``'s geo-weighted loss (:class:`GeoWeightedContrastive`) over the negatives
    ``loss.scope`` names: each positive's siblings, or the level, whole (``full``) or sampled
    candidates."""
    fn = GeoWeightedContrastive(space, cfg.loss.tau[j], cfg.loss.sigma_km[j], cfg.loss.lam[j],
                                cfg.loss.weight_form)
    if cfg.loss.scope == "siblings":
        q, cand, is_pos = hier.sibling_pairs(pl)
        return fn.grouped(zl, rows(cand), hier.latlon[cand], ll, q, is_pos, check=False)["loss"]
    if full:
        tbl = hier.level_ids[j]
        # entity blocks sized from the device's free memory (16 x 8 x batch x block bytes):
        # memory bounded whatever the level's size
        return fn.full(zl, rows(tbl), hier.latlon[tbl], ll, hier.pos_in_level[pl],
                       block=block_size(len(zl), len(tbl), zl.device))["loss"]
    cand, valid, log_share = sampler.sample(pl, j, cfg.loss.n_siblings, cfg.loss.n_cousins,
                                            cfg.loss.n_random, gen)
    return fn(zl, rows(cand), hier.latlon[cand], ll, valid, log_share)["loss"]


def _ablation_loss(cfg: Config, j: int, space, zl, pl, hier: Hierarchy, rows) -> torch.Tensor:
    """Level ``j``'s loss for a PML ablation (``loss.function``, :func:`hiergeo.losses.ablations.
    ablation`). Its reference entities: with ``loss.scope=siblings`` every sibling of the
    batch's positives (the union of the groups the shipped loss scores one by one), with
    ``level`` the whole level (``loss.candidates`` does not apply). PML scores every query
    against every reference at once, about 100 bytes per pair at the peak
    (:data:`hiergeo.losses.ablations.PEAK_BYTES_PER_PAIR`), not streamed: an ablation for small
    runs, not for OSV-5M's 165k cities at a GPU's batch (4,096 x 165k pairs: 73 GB). On the
    names benchmark's cities U reaches 31k for B = 256 (the shipped loss scores 51k pairs
    there): a step took 2.7 s against the shipped loss's 0.2 s (one CPU thread). The union
    (``torch.unique``), the label check, PML's miner and ``ProxyAnchorLoss`` wait on the
    device at each level, which the shipped loss avoids."""
    from ..losses.ablations import ablation  # here: loading pytorch-metric-learning takes 0.7 s

    if cfg.loss.scope == "siblings":
        ref = torch.unique(hier.sibling_pairs(pl)[1])  # sorted, each positive among them
        labels = torch.searchsorted(ref, pl)
    else:
        ref, labels = hier.level_ids[j], hier.pos_in_level[pl]
    fn = ablation(cfg.loss.function, space, cfg.loss.tau[j], cfg.loss.margin)
    return fn(zl, labels, rows(ref))


def _full_levels(cfg: Config, hier: Hierarchy, device, batch: int) -> list[bool]:
    """Per level, whether the loss scores every entity (True) or sampled candidates.

    Both estimate the same objective (the sampled denominator is an unbiased estimate of the
    full one, :mod:`hiergeo.train.candidates`), so this choice trades memory for variance and
    never changes what is optimised: ``full`` and ``sampled`` are honoured on any device;
    ``auto`` scores every entity on a GPU and, on a CPU, where ``batch x level size`` is at
    most ``loss.full_max``."""
    mode = cfg.loss.candidates
    if mode == "full":
        return [True] * len(LEVELS)
    if mode == "sampled":
        return [False] * len(LEVELS)
    if device.type == "cuda":
        return [True] * len(LEVELS)
    return [batch * len(ids) <= cfg.loss.full_max for ids in hier.level_ids]


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


def validation_metrics(model, split, hier, cfg: Config, rows: np.ndarray) -> dict:
    """Top-1 per level from the descent's path and median km, on ``rows`` of ``split``."""
    from ..metrics import haversine_km
    from ..predict import predict

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
    out["val_median_km"] = float(np.median(haversine_km(pred.lat, pred.lon, ll[:, 0],
                                                        ll[:, 1])))
    return out


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
        return _run(cfg, d, ckpt, procs)
    finally:
        procs.close()


def _run(cfg: Config, d: Path, ckpt: dict | None, procs: Processes) -> dict:
    """Set up, train, then calibrate and evaluate (process 0) a run in ``d``."""
    _prepare_dir(cfg, d, ckpt is not None, procs)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    torch.manual_seed(cfg.run.seed)
    t_start = time.perf_counter()
    if cfg.optim.batch_size < procs.world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is smaller than the "
                          f"{procs.world} processes: every process needs a sample of each batch")
    tr = _setup(cfg, d, ckpt, procs)
    _train(tr)
    result = {"steps": tr.total, "train_seconds": time.perf_counter() - t_start,
              "world_size": procs.world, "run_dir": str(d)}
    if procs.world > 1:
        result["ddp_params_in_sync"] = _params_in_sync(tr.model)
    if procs.main:
        result = _final_evaluation(tr, result, t_start)
    procs.wait_for_main()
    return result


@dataclass
class Training:
    """Everything a run's steps read and change: built by :func:`_setup`, advanced by
    :func:`train_step`, saved by :func:`save_checkpoint`."""

    cfg: Config
    d: Path
    procs: Processes
    gz: object
    data: object                  # hiergeo.data.splits.TrainData
    model: torch.nn.Module        # GeoModel
    hier: Hierarchy
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    head_params: list
    opt: torch.optim.Optimizer
    sched: object
    ent_opt: torch.optim.Optimizer | None
    ent_sched: object | None
    sparse_entities: bool
    step_rows: StepRows
    total: int
    full_levels: list | None = None   # per level, whether every entity is a candidate
    sampler: CandidateSampler | None = None
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
    with torch.no_grad():  # (a checkpoint, when resuming, overwrites this with its own)
        E0 = model.entities.detach()
        kids = torch.nonzero(hier.parent >= 0).flatten()
        model.parent_margin[kids] = model.space.pair(E0[kids], E0[hier.parent[kids]])
    return gz, data, model, hier


def _optimisers(cfg: Config, model, total: int, device):
    """``(head_params, opt, sched, ent_opt, ent_sched, sparse)``: AdamW on the head (and a
    trained encoder), geoopt's Riemannian Adam on the entity table (sparse or dense, see
    ``optim.entity_optimizer``), both on the warm-up + cosine schedule."""
    import geoopt

    head_params = [p for n, p in model.named_parameters() if p.requires_grad
                   and n != "entities"]
    opt = torch.optim.AdamW(head_params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ent_opt = None
    sparse = sparse_entities(cfg, device)
    # "auto" is settled once, at the start, and written to config.yaml: a resumed run keeps
    # its optimiser (whose state the checkpoint holds) on whatever hardware it resumes
    cfg.optim.entity_optimizer = "sparse" if sparse else "dense"
    if model.entities.requires_grad and sparse:
        ent_opt = geoopt.optim.SparseRiemannianAdam([model.entities], lr=cfg.optim.entity_lr)
    elif model.entities.requires_grad:
        ent_opt = geoopt.optim.RiemannianAdam([model.entities], lr=cfg.optim.entity_lr,
                                              stabilize=cfg.optim.stabilize)
    lam = _lr_lambda(cfg, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    ent_sched = torch.optim.lr_scheduler.LambdaLR(ent_opt, lam) if ent_opt else None
    return head_params, opt, sched, ent_opt, ent_sched, sparse


def _setup(cfg: Config, d: Path, ckpt: dict | None, procs: Processes) -> Training:
    """Data, model, optimisers and schedules, the checkpoint's state when resuming, the
    DDP wrapper and the loss's candidates; writes ``config.yaml`` and ``data_report.json``."""
    gz, data, model, hier = _data_and_model(cfg, ckpt, procs)
    dev, B = procs.device, cfg.optim.batch_size
    step_rows = StepRows(cfg.run.seed, len(data.train), B, procs.rank, procs.world)
    total = max(1, math.ceil(cfg.optim.epochs * step_rows.spe))
    if cfg.optim.max_steps is not None:
        total = min(total, cfg.optim.max_steps)
    head_params, opt, sched, ent_opt, ent_sched, sparse = _optimisers(cfg, model, total, dev)
    tr = Training(cfg, d, procs, gz, data, model, hier, model, head_params, opt, sched,
                  ent_opt, ent_sched, sparse, step_rows, total)
    if ckpt is not None:
        _resume(tr, ckpt)
    if procs.main:  # written before anything below can refuse to start
        atomic_write_text(d / "config.yaml", cfg.to_yaml())
        (d / "data_report.json").write_text(json.dumps(data.report, indent=2, default=str))
    if procs.world > 1 and sparse:
        raise ConfigError("optim.entity_optimizer=sparse cannot run under DDP (its gradient "
                          "buckets cannot hold sparse tensors); use dense or auto")
    if procs.world > 1:
        tr.train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    tr.full_levels = full_levels = _full_levels(cfg, hier, dev, math.ceil(B / procs.world))
    tr.sampler = candidate_sampler(cfg, hier, full_levels)
    if cfg.loss.scope == "level" and cfg.loss.function == "geo" and procs.main:
        log.info("candidates per level: %s", ", ".join(
            f"{lvl} {'all' if f else 'sampled'}" for lvl, f in zip(LEVELS, full_levels,
                                                                   strict=True)))
    tr.bf16 = cfg.hardware.precision == "bf16" or (cfg.hardware.precision == "auto"
                                                   and dev.type == "cuda")
    return tr


def _resume(tr: Training, ckpt: dict) -> None:
    """Load a checkpoint's model, optimisers, schedules and step into ``tr``."""
    tr.model.load_state_dict(ckpt["model"])
    tr.model.project_entities_()
    tr.opt.load_state_dict(ckpt["opt"])
    tr.sched.load_state_dict(ckpt["sched"])
    if tr.ent_opt is not None:
        tr.ent_opt.load_state_dict(ckpt["ent_opt"])
        tr.ent_sched.load_state_dict(ckpt["ent_sched"])
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
    state = {"step": at_step, "model": tr.model.state_dict(), "opt": tr.opt.state_dict(),
             "sched": tr.sched.state_dict(), "active": tr.hier.active.cpu(),
             "config": tr.cfg.to_yaml(),
             "meta": {"in_dim": tr.data.in_dim, "n_entities": len(gz.entities),
                      "gazetteer": json.dumps(gz.meta.get("sources", {}), default=str),
                      "total_steps": tr.total, "world_size": tr.procs.world,
                      "saved": _dt.datetime.now().isoformat(timespec="seconds")}}
    if tr.ent_opt is not None:
        state["ent_opt"], state["ent_sched"] = tr.ent_opt.state_dict(), tr.ent_sched.state_dict()
    checkpoint.save(tr.d / checkpoint.NAME, state)


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
    terms = _level_losses(cfg, model, z.to(torch.float64), ids, ll, tr.hier, gen,
                          tr.full_levels, tr.sampler, tr.sparse_entities)
    if not torch.isfinite(terms["loss"]):
        save_checkpoint(tr, tr.step)
        raise FloatingPointError(f"loss is {terms['loss'].item()} at step {tr.step}; the last "
                                 f"good state is in {tr.d / checkpoint.NAME}")
    tr.opt.zero_grad(set_to_none=True)
    if tr.ent_opt is not None:
        tr.ent_opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(tr.head_params, cfg.optim.grad_clip)
        if tr.ent_opt is not None and not model.entities.grad.is_sparse:
            torch.nn.utils.clip_grad_norm_([model.entities], cfg.optim.grad_clip)
    with _deferred_interrupt():  # Ctrl-C never leaves a half-applied update
        tr.opt.step()
        tr.sched.step()
        if tr.ent_opt is not None:
            tr.ent_opt.step()
            tr.ent_sched.step()
            if tr.sparse_entities and (tr.step + 1) % max(1, cfg.optim.stabilize) == 0:
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
    logger = _Log(tr.d, tr.step, cfg.run.tensorboard, procs.main)
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
           "lr": tr.sched.get_last_lr()[0],
           "samples_per_s": window[1] / max(now - window[0], 1e-9),
           **{k: float(v.detach()) for k, v in terms.items()}}
    window[:] = [now, 0]
    bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
    return row


def _final_evaluation(tr: Training, result: dict, t_start: float) -> dict:
    """Process 0 after the last step: calibration (temperatures, the memory's weights) on
    the validation split, the checkpoint again with it, then evaluation and
    ``metrics.json``."""
    from ..evaluate import build_memory, evaluate_split

    cfg, model, d = tr.cfg, tr.model, tr.d
    memory = build_memory(cfg, tr.data.train, model.entities.device)
    neighbours = None
    if cfg.eval.calibrate:
        result["temperatures"], neighbours = _calibrate(model, tr.data.val, tr.hier, cfg, d,
                                                        memory)
        save_checkpoint(tr, tr.total)  # the stored model carries its calibration
    result.update(evaluate_split(model, tr.hier, tr.data.val, cfg, tr.gz, d, memory=memory,
                                 neighbours=neighbours))
    result["memory"] = memory is not None and model.uses_memory
    result["seconds"] = time.perf_counter() - t_start
    atomic_write_text(d / "metrics.json", json.dumps(result, indent=2, default=float) + "\n")
    return result


@torch.no_grad()
def query_points(model, split, rows: np.ndarray, batch_size: int = 1024,
                 features: bool = False):
    """The model's query points for ``rows`` of ``split``, inputs loaded a batch at a time
    (images are decoded per batch, never all at once); with ``features``, ``(points,
    encoder features)``, from one pass of the encoder."""
    was = model.training
    model.eval()
    dev = model.entities.device
    zs, fs = [], []
    try:
        for s in range(0, len(rows), batch_size):
            f = model.encoder(split.inputs(rows[s:s + batch_size]).to(dev))
            zs.append(model.query_from_features(f))
            if features:
                fs.append(f)
    finally:
        model.train(was)
    z = torch.cat(zs)
    return (z, torch.cat(fs)) if features else z


def _calibrate(model, split, hier, cfg: Config, d: Path, memory=None):
    """Fit the per-level temperatures on (a random subset of) the validation split, then
    the memory's weights if there is a memory, and write them to ``calibration.json``.
    Returns the temperatures' report and, when the subset is the whole split, the memory's
    neighbours of every row (evaluation reuses them instead of searching again), else
    None."""
    from ..predict.calibration import fit_memory_weights, fit_temperatures

    n = len(split)
    rows = np.sort(np.random.default_rng([cfg.run.seed, 13]).permutation(n)[
        :cfg.eval.calibration_max])
    z, f = query_points(model, split, rows, features=True) if memory is not None else (
        query_points(model, split, rows), None)
    rep = fit_temperatures(model, z, split.ids[rows].to(model.entities.device), hier,
                           cfg.loss.tau)
    log.info("calibration on %d validation samples: %s", len(rows), ", ".join(
        f"{lvl} T={r['T']:.3g} (nll {r['nll_before']:.3f} -> {r['nll']:.3f})"
        for lvl, r in rep.items()))
    out = {"samples": len(rows), "levels": rep}
    nb = None
    if memory is not None:
        nb = memory.search(f)
        out["memory"] = fit_memory_weights(model, z, nb, split.ids[rows].to(
            model.entities.device), hier, cfg.loss.tau)
        log.info("memory on the same samples: %s", ", ".join(
            f"{lvl} a={r['a']:.3g} T'={r['T']:.3g} (accuracy given the parent "
            f"{r['accuracy_model']:.3f} -> {r['accuracy']:.3f})"
            for lvl, r in out["memory"].items() if r["n"]))
    atomic_write_text(d / "calibration.json", json.dumps(out, indent=2) + "\n")
    return rep, (nb if len(rows) == n else None)


def _params_in_sync(model) -> bool:
    """Every rank holds the same parameters (DDP's whole point): compare checksums."""
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    got = [torch.zeros_like(s) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(got, s)
    return all(torch.equal(got[0], g) for g in got[1:])
