"""A run's folder: where it is (``run.out / (run.id or the preset)``), made or replaced before
training, and the training log written into it (``log.csv``, appended and flushed per row, and
TensorBoard)."""

from __future__ import annotations

import csv
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

from gazetteer.keys import LEVELS

from ..config import Config
from ..files import exclusive
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


@contextmanager
def run_lock(d: Path, main: bool):
    """The main process holds ``d/.lock`` for the whole run (:func:`hiergeo.files.exclusive`):
    a second training into the same folder stops at once with :class:`hiergeo.files.Busy`
    naming the holder, instead of interleaving logs and checkpoints."""
    if not main:
        yield
        return
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive(d / LOCK, f"the run folder {d}"):
            stale = clear_temporaries(d)
            if stale:
                log.info("%s: removed %d temporary files of an interrupted write (%s)", d,
                         len(stale), stale[0].name)
            yield
    finally:
        # a run that stopped before writing anything (a typo in data.train) leaves no
        # empty folder behind
        if created and [p.name for p in d.iterdir()] in ([], [LOCK]):
            (d / LOCK).unlink(missing_ok=True)
            d.rmdir()


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.out) / (cfg.run.id or cfg.preset)


#: What a run writes into its folder (training, calibration, the final evaluation): all that
#: ``run.overwrite=true`` removes. Anything else in the folder (notes, a store) is kept.
RUN_FILES = (checkpoint.NAME, "metrics.json", "log.csv", "config.yaml", "data_report.json",
             "calibration.json", "per_country.csv", "per_country.md", "predictions.parquet",
             "error_map.png", "error_curve.png", "reliability.png",
             # the retrieval memory's ivfpq index (hiergeo.evaluate.MEMORY_INDEX_FILE, _META)
             "memory.faiss", "memory_index.json")
RUN_FOLDERS = ("tensorboard",)
#: The lock file a running training holds (:func:`run_lock`).
LOCK = ".lock"


def _inputs(cfg: Config) -> list[Path]:
    return [Path(p) for p in (cfg.data.train, cfg.data.val, cfg.data.images, cfg.data.image_dir)
            if p]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def clear_temporaries(d: Path) -> list[Path]:
    """Remove the temporary files interrupted writes of :data:`RUN_FILES` left in ``d`` (a
    kill or a full disk mid-checkpoint: ``checkpoint.pt.tmpPID``); only while holding the
    run's lock, so no live writer owns them. Returns what was removed."""
    gone = []
    for name in RUN_FILES:
        for p in d.glob(f"{name}.*tmp*"):
            if p.is_file() or p.is_symlink():
                p.unlink()
                gone.append(p)
    return gone


def clear_run(d: Path) -> list[Path]:
    """Remove what a run wrote into ``d`` (:data:`RUN_FILES`, :data:`RUN_FOLDERS`, and the
    temporary files of interrupted writes beside them); returns what was removed."""
    gone = clear_temporaries(d)
    for name in RUN_FILES:
        p = d / name
        if p.is_file() or p.is_symlink():
            p.unlink()
            gone.append(p)
    for name in RUN_FOLDERS:
        if (d / name).is_dir() and not (d / name).is_symlink():
            shutil.rmtree(d / name)
            gone.append(d / name)
    return gone


def prepare_dir(cfg: Config, d: Path, resume: bool, procs: Processes) -> None:
    if resume:
        return
    busy = d.exists() and any((d / f).exists() for f in (checkpoint.NAME, "metrics.json",
                                                          "log.csv"))
    if busy and not cfg.run.overwrite:
        raise FileExistsError(
            f"{d} already holds a run. Continue it with --resume {d}, replace it with "
            f"run.overwrite=true, or pick another folder with run.id=NAME")
    if busy:
        inside = [p for p in _inputs(cfg) if _inside(p, d)]
        if inside:
            raise FileExistsError(
                f"run.overwrite=true refused: {d} holds this run's input {inside[0]}; move the "
                "input out of the run folder, or pick another folder with run.id=NAME")
    if procs.main:
        if busy:
            gone = clear_run(d)
            log.info("run.overwrite: removed the previous run's %d files from %s (anything "
                     "else there is kept)", len(gone), d)
        d.mkdir(parents=True, exist_ok=True)
    procs.barrier()
