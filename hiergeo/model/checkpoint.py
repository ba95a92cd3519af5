"""Checkpoints: one file, written atomically, read with ``weights_only=True``.

``results/<run_id>/checkpoint.pt`` holds the step reached, the model (head, encoder when it
is trained, entity table), both optimisers, the schedules, the resolved config and what the
model was built on (entity count, gazetteer fingerprint, feature dimension). Randomness is
derived from (seed, step), so these are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NAME = "checkpoint.pt"


def _plain(obj):
    """Tensors as plain ``torch.Tensor`` (geoopt's subclasses would not load with
    ``weights_only=True``), recursively."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().as_subclass(torch.Tensor).clone()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def save(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a kill leaves the old
    checkpoint or the new one, never half of one. On a full disk the temporary file is
    removed and :class:`hiergeo.files.DiskFullError` says so (the previous checkpoint is
    kept; ``--resume`` continues from it once there is space)."""
    from ..files import DiskFullError, disk_full

    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        # through a Python file, so that a full disk surfaces as OSError ENOSPC (torch's own
        # writer says only "basic_ios::clear: iostream error")
        with open(tmp, "wb") as fh:
            torch.save(_plain(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            then = (f"the previous checkpoint is kept; free space, then continue with "
                    f"--resume {path.parent}" if path.exists()
                    else "no checkpoint yet; free space, then start the run again")
            raise DiskFullError(28, f"disk full while writing {path} ({then})") from None
        raise


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint here (a run writes {NAME} every "
                                "run.checkpoint_every steps and at the end)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise RuntimeError(f"{path}: cannot read this checkpoint ({exc})") from exc
