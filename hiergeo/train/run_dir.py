"""A run's folder: ``run.out / (run.id or the preset)``, made (or replaced) before training."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import Config
from ..model import checkpoint
from .processes import Processes


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.out) / (cfg.run.id or cfg.preset)


def prepare_dir(cfg: Config, d: Path, resume: bool, procs: Processes) -> None:
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
