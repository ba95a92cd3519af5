"""One flat cross-entropy classifier per level (OSV-5M's classification baseline)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from .common import as_prediction, medoid_points

log = logging.getLogger(__name__)


class _Net(nn.Module):
    def __init__(self, in_dim: int, n_classes: list[int], hidden: int | None):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        d = in_dim
        if hidden:
            layers += [nn.Linear(in_dim, hidden), nn.GELU()]
            d = hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in n_classes)

    def forward(self, x):
        h = self.trunk(x)
        return [head(h) for head in self.heads]


class FlatSoftmax:
    """A softmax over the training set's entities at each of ``levels`` (0 country ...
    3 city), trained jointly (summed cross-entropies) on a shared input: linear
    (``hidden=None``) or one hidden layer. Each level answers on its own (no tree); the
    location is the deepest level's answer's point (:func:`~.common.medoid_points`).

    A city-level softmax has one class per training city (~110k on the names benchmark), and
    its output layer makes each step too slow to train on a CPU, so the default stops at
    subregions (see results/benchmarks/README.md#names-benchmark).
    """

    def __init__(self, levels=(0, 1, 2), hidden: int | None = None, epochs: float = 10,
                 batch_size: int = 512, lr: float = 2e-3, weight_decay: float = 1e-4,
                 seed: int = 0, device: str = "cpu"):
        self.levels = list(levels)
        self.hidden, self.epochs, self.batch_size = hidden, epochs, batch_size
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.device = torch.device(device)

    def fit(self, train, progress: bool = True) -> FlatSoftmax:
        from tqdm.auto import tqdm

        ids = train.ids.numpy()
        self.classes = [np.unique(ids[:, j][ids[:, j] >= 0]) for j in self.levels]
        target = torch.stack([
            torch.from_numpy(np.where(ids[:, j] >= 0, np.searchsorted(c, ids[:, j]), -100))
            for j, c in zip(self.levels, self.classes, strict=True)], 1)
        deepest = self.levels[-1]
        self.points = medoid_points(ids[:, deepest], train.latlon.numpy())
        torch.manual_seed(self.seed)
        self.net = _Net(train.x.shape[1], [len(c) for c in self.classes],
                        self.hidden).to(self.device)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr,
                                weight_decay=self.weight_decay)
        n, B = len(target), self.batch_size
        spe = math.ceil(n / B)
        total = max(1, int(self.epochs * spe))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=total,
                                                    pct_start=0.05)
        rng = np.random.default_rng(self.seed)
        self.net.train()
        bar = tqdm(range(total), desc="flat softmax", unit="step", disable=not progress)
        order = None
        for step in bar:
            pos = step % spe
            if pos == 0:
                order = torch.from_numpy(rng.permutation(n))
            b = order[pos * B:(pos + 1) * B]
            logits = self.net(train.x[b].float().to(self.device))
            t = target[b].to(self.device)
            loss = sum(nn.functional.cross_entropy(lg, t[:, i], ignore_index=-100)
                       for i, lg in enumerate(logits) if bool((t[:, i] >= 0).any()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        self.net.eval()
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 4096):
        paths = np.full((len(x), 4), -1, np.int64)
        prob = np.full((len(x), 4), np.nan)
        for s in range(0, len(x), batch):
            logits = self.net(x[s:s + batch].float().to(self.device))
            for i, (j, lg) in enumerate(zip(self.levels, logits, strict=True)):
                p, k = torch.softmax(lg.double(), 1).max(1)
                paths[s:s + batch, j] = self.classes[i][k.cpu().numpy()]
                prob[s:s + batch, j] = p.cpu().numpy()
        ids, points = self.points
        ll = points[np.searchsorted(ids, paths[:, self.levels[-1]])]
        return as_prediction(paths, ll[:, 0], ll[:, 1], prob)
