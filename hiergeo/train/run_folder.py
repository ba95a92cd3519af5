"""A run's folder: where it is (``run.out / (run.id or the preset)``), made or replaced before
training, and the training log written into it (``log.csv``, appended and flushed per row, and
TensorBoard)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

from gazetteer.keys import LEVELS

from ..config import Config
from ..model import checkpoint
from .processes import Processes

log = logging.getLogger(__name__)

LOG_COLUMNS = (["step", "epoch", "lr", "samples_per_s", "loss"]
               + [f"loss_{lvl}" for lvl in LEVELS] + ["loss_parent"]
               + [f"val_top1_{lvl}" for lvl in LEVELS] + ["val_median_km"])


class RunLog:
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
