"""Baseline: Poincaré embeddings by optimisation (Nickel & Kiela 2017).

For every tree edge (u, v) in both directions the loss is the softmax cross-entropy of
``-d(u, v)`` against ``-d(u, n)`` for ``negatives`` uniformly sampled nodes, minimised with
geoopt's Riemannian Adam; the first ``burn_in`` epochs run at a tenth of the learning rate to
find a good angular layout before points move outward (as in the paper).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import dist, make_ball

log = logging.getLogger(__name__)


def optimize(parent: np.ndarray, *, dim: int = 16, c: float = 1.0, epochs: int = 30,
             burn_in: int = 3, lr: float = 0.3, batch_size: int = 2048, negatives: int = 10,
             init_scale: float = 1e-3, seed: int = 0, progress: bool = True
             ) -> tuple[torch.Tensor, dict]:
    """Train points for the tree given by ``parent`` (root: -1); float64 throughout."""
    from ..geometry.poincare import import_geoopt

    geoopt = import_geoopt()

    g = torch.Generator().manual_seed(seed)
    n = len(parent)
    ball = make_ball(c)
    init = (torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 - 1) * init_scale
    weights = geoopt.ManifoldParameter(init, manifold=ball)
    opt = geoopt.optim.RiemannianAdam([weights], lr=lr, stabilize=10)
    kids = torch.tensor(np.flatnonzero(parent >= 0))
    par = torch.tensor(parent)
    edges = torch.cat([torch.stack([kids, par[kids]], 1),
                       torch.stack([par[kids], kids], 1)])
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"poincare-embed d={dim}", disable=not progress)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr / 10 if epoch < burn_in else lr
        perm = torch.randperm(len(edges), generator=g)
        total = 0.0
        for b0 in range(0, len(edges), batch_size):
            e = edges[perm[b0:b0 + batch_size]]
            neg = torch.randint(0, n, (len(e), negatives), generator=g)
            cand = torch.cat([e[:, 1:], neg], 1)  # positive first
            d = dist(weights[e[:, 0]].unsqueeze(1), weights[cand], c)
            loss = torch.nn.functional.cross_entropy(-d, torch.zeros(len(e), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(e)
        losses.append(total / len(edges))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"optimisation diverged at epoch {epoch}")
    info = {"epochs": epochs, "burn_in": burn_in, "lr": lr, "batch_size": batch_size,
            "negatives": negatives, "final_loss": losses[-1], "losses": losses,
            "train_seconds": time.perf_counter() - t0}
    return weights.detach().clone(), info
