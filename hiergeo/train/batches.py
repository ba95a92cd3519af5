"""Training batches: which rows each step takes, and their inputs gathered ahead of time.

Rows: epoch ``e`` visits the training rows in the order ``permutation(seed, e)``; step ``s``
of the epoch takes the next ``batch_size`` of them and rank ``r`` of ``world`` takes every
``world``-th of those, starting at ``r``. So every rank gets a share of every step, the
order depends only on (seed, step), and a resumed run takes the steps the uninterrupted run
would have taken. When the epoch's last batch would hold fewer samples than there are ranks
it is dropped (a rank with no sample cannot take part in DDP's gradient reduction).

Inputs are gathered while the previous step computes:

- feature stores: one background thread reads the next ``depth`` batches
  (:class:`~hiergeo.data.rows.StoreFeatures` reads release the GIL), pinned when the model
  is on a GPU;
- images: a ``torch.utils.data.DataLoader`` with ``hardware.workers`` worker processes
  decodes and preprocesses the next batches, with pinned memory on a GPU. An image that fails
  to decode is left out of its batch, counted and logged (the run checked every file's
  header when it started, not its pixels: decoding 5M photos up front takes most of a day).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger(__name__)


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """``ceil(n / batch_size)``, less the last batch when it holds fewer than ``world``
    samples (at least 1)."""
    spe = max(1, math.ceil(n / batch_size))
    last = n - (spe - 1) * batch_size
    if spe > 1 and last < world:
        spe -= 1
    return spe


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 7, epoch]).permutation(n)


class StepRows:
    """The rows of ``n`` that rank ``rank`` of ``world`` takes at each step (see the module
    docstring). ``rows(step)`` -> int64 array; the epoch's order is cached."""

    def __init__(self, seed: int, n: int, batch_size: int, rank: int = 0, world: int = 1):
        if n < world or batch_size < world:
            raise ValueError(f"{n} training samples in batches of {batch_size} for {world} "
                             "processes: every process needs a sample of every batch")
        self.seed, self.n, self.batch_size = seed, n, batch_size
        self.rank, self.world = rank, world
        self.spe = steps_per_epoch(n, batch_size, world)
        self._epoch, self._order = -1, None

    def rows(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.spe)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.seed, epoch, self.n)
        batch = self._order[pos * self.batch_size:(pos + 1) * self.batch_size]
        return batch[self.rank::self.world]


class _Steps(torch.utils.data.Sampler):
    def __init__(self, step_rows: StepRows, start: int, total: int):
        self.step_rows, self.start, self.total = step_rows, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        for s in range(self.start, self.total):
            yield self.step_rows.rows(s).tolist()


def batches(split, step_rows: StepRows, start: int, total: int, device, workers: int = 2,
            depth: int = 2) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(rows, inputs)`` for steps ``start .. total - 1`` of ``split``, gathered ahead of
    time; ``rows`` are the split's rows the inputs hold (an image that failed to decode is
    left out). Inputs stay in their stored dtype; move them with ``non_blocking=True``."""
    pin = torch.device(device).type == "cuda"
    if split.x is not None:
        yield from _feature_batches(split, step_rows, start, total, pin, depth)
        return
    from ..data.images import ImageRows, collate_images

    loader = torch.utils.data.DataLoader(
        ImageRows(split.images.paths, split.images.transform),
        batch_sampler=_Steps(step_rows, start, total), collate_fn=collate_images,
        num_workers=workers, pin_memory=pin, prefetch_factor=depth if workers else None,
        persistent_workers=False)
    skipped = 0
    for x, kept, bad in loader:
        for i, why in bad:
            skipped += 1
            if skipped <= 5:
                log.warning("skipping %s: %s", split.images.paths[i], why)
        if x is None:  # skipping the step would leave DDP's other ranks waiting
            from ..data.splits import DataError

            raise DataError(f"no image of a training batch could be decoded ({bad[:3]})")
        yield kept.numpy(), x
    if skipped:
        log.warning("%d images could not be decoded during training and were left out",
                    skipped)


def _feature_batches(split, step_rows, start, total, pin, depth):
    def load(step):
        rows = step_rows.rows(step)
        x = split.inputs(rows)
        return rows, (x.pin_memory() if pin else x)

    with ThreadPoolExecutor(1, thread_name_prefix="hiergeo-batches") as pool:
        ahead = [pool.submit(load, s) for s in range(start, min(start + depth, total))]
        nxt = start + len(ahead)
        while ahead:
            rows, x = ahead.pop(0).result()
            if nxt < total:
                ahead.append(pool.submit(load, nxt))
                nxt += 1
            yield rows, x
