"""Geo-weighted hyperbolic contrastive loss (HierLoc's objective, per level).

For one level, with logits ``s_j = -d(z, e_j) / tau``, the positive entity at column 0 and a
weight ``w_j`` for each negative that depends on ``km_j = haversine(y, c_j)`` (y the sample's
location, c_j the entity's centroid)::

    L = -log( exp(s_0) / (exp(s_0) + sum_{j>0} w_j exp(s_j)) )

Two forms of ``w_j`` (``form=``):

- ``"paper"`` (the default; HierLoc's paper): ``w_j = 1 + lam * exp(-km_j / sigma)``. Far
  negatives weigh 1, as in plain InfoNCE, so the loss still pushes far entities apart; near
  ones weigh up to ``1 + lam``. ``lam = 0`` is plain InfoNCE; ``sigma = inf`` weighs every
  negative ``1 + lam``.
- ``"page"`` (HierLoc's project page): ``w_j = exp(-km_j / sigma)``. Negatives a few sigma
  away weigh nothing, so nothing pushes far entities apart; ``sigma = inf`` is plain InfoNCE.

Computed stably as ``-s_0 + logsumexp([s_0, s_j + log w_j + log n_j])``, where ``n_j`` is the
number of negatives a sampled candidate stands for (1 when every negative is a candidate; see
:mod:`hiergeo.losses.candidates`, whose importance weights make the sum an unbiased estimate of
the full one). Columns flagged invalid (padding) are left out.

With one candidate table for the whole batch (every entity of a level),
:meth:`GeoWeightedContrastive.full` can stream the table in blocks of entities: the same value
and gradients in memory that grows with the block, not the level (:func:`block_size`).

As pytorch-metric-learning's losses take a distance object, this one takes the space (a
:mod:`hiergeo.geometry.spaces` space: ``space(z, e)``, ``.pair``, ``.matrix``) and turns its
distances into logits by negation. Entity points stay in float64; logits are cast to the dtype
of the query ``z``.
"""

from __future__ import annotations

import copy
import math

import torch

from gazetteer import geo


def haversine_km_torch(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """Great-circle km between points in degrees (broadcasting), in float64: the project's
    one haversine (:func:`gazetteer.geo.haversine_km`) on tensors."""
    return geo.haversine_km(lat1.double(), lon1.double(), lat2.double(), lon2.double(),
                            xp=torch)


def _xyz(latlon: torch.Tensor) -> torch.Tensor:
    lat, lon = torch.deg2rad(latlon[..., 0].double()), torch.deg2rad(latlon[..., 1].double())
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon),
                        torch.sin(lat)], dim=-1)


def haversine_matrix_km(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Great-circle km between every row of ``a [B, 2]`` and of ``b [N, 2]`` (degrees), via
    one matrix product of unit vectors (:func:`gazetteer.geo.chord_to_km`): a ``B x N``
    haversine would hold several ``B x N`` temporaries. In float64 the chord of 1 km keeps
    ~8 significant digits, plenty for loss weights; use :func:`haversine_km_torch` where the
    last digit matters."""
    chord2 = (2.0 - 2.0 * _xyz(a) @ _xyz(b).T).clamp_min(0.0)
    return geo.chord_to_km(chord2.sqrt(), xp=torch)


#: The forms of the negative weights (see the module docstring).
WEIGHT_FORMS = ("paper", "page")

#: Float64 ``[B, block]`` temporaries alive at once at the peak of a blocked
#: :meth:`GeoWeightedContrastive.full`: the most over the four spaces, plus ~10% for the
#: allocator. The peak is in backward (a block's recomputed autograd graph, the softmax weights
#: and the gradients flowing back); forward holds 4 to 8. Measured, not counted: peak RSS with
#: glibc handing freed blocks straight back (``python benchmarks/bench_loss_memory.py
#: --calibrate``) gave poincare 12.5, lorentz 11.5, euclidean 7.5, sphere 14.5 (the one-shot
#: path: 10, 11, 7, 12 times ``[B, N]``).
BLOCK_TEMPS = 16
#: Default budget for a block's temporaries on a CPU: 4 MiB each at ``B = 4096``. Blocks whose
#: temporaries stay near the caches ran 2-3x faster than blocks of tens of MiB each (fresh
#: pages for every temporary), and faster than the one-shot path.
CPU_BLOCK_BUDGET = 64 * 2**20
#: Share of a GPU's free memory (the driver's free plus what PyTorch caches unused) a block
#: may take: the rest of the step (other levels, the optimiser) needs room too.
CUDA_BLOCK_SHARE = 0.5
#: Default cap on a block's temporaries on a GPU (``hardware.loss_memory_gb`` unset): the
#: loss takes no more than this even on a card with far more free, leaving the rest to a
#: backbone being fine-tuned beside it or to a second job. Measured on an H200 at batch 4096
#: over 165k entities (``scripts/gpu_check.py``, results/benchmarks/gpu.md): 0.251 s per
#: forward + backward in 2 GiB (peak 1.7 GB), 0.228 s in 8 GiB (6.5 GB), 0.222 s in 32 GiB,
#: 0.225 s in half the free memory (56 GB, the former default).
CUDA_BLOCK_CAP = 8 * 2**30


def cuda_budget(device: torch.device | str) -> int:
    """Bytes a loss may take on a GPU: :data:`CUDA_BLOCK_SHARE` of the driver's free memory
    plus what PyTorch has reserved but not allocated."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(CUDA_BLOCK_SHARE * (free + cached))


def block_size(batch: int, n: int, device: torch.device | str,
               budget_bytes: int | None = None) -> int:
    """Entities per block for :meth:`GeoWeightedContrastive.full` over ``n`` entities.

    Peak memory of one blocked forward + backward is about::

        BLOCK_TEMPS x 8 x batch x block  bytes   (+ O((batch + n) x D) for the inputs and their
                                                   gradients, whatever the block)

    so ``block = budget_bytes // (BLOCK_TEMPS x 8 x batch)``, clamped to ``[1, n]``.

    Args:
        batch: rows of ``z``.
        n: entities in the level.
        device: where the loss runs.
        budget_bytes: bytes the temporaries may take (``hardware.loss_memory_gb``). None:
            on CUDA :data:`CUDA_BLOCK_CAP` or, when less, :data:`CUDA_BLOCK_SHARE` of
            ``torch.cuda.mem_get_info``'s free memory plus the memory PyTorch has reserved
            but not allocated; elsewhere :data:`CPU_BLOCK_BUDGET`.
    """
    device = torch.device(device)
    if budget_bytes is None:
        if device.type == "cuda":
            budget_bytes = min(CUDA_BLOCK_CAP, cuda_budget(device))
        else:
            budget_bytes = CPU_BLOCK_BUDGET
    if budget_bytes <= 0:
        raise ValueError(f"a loss memory budget must be positive, got {budget_bytes} bytes")
    per_column = BLOCK_TEMPS * 8 * max(int(batch), 1)
    return int(min(max(budget_bytes // per_column, 1), max(int(n), 1)))


class GeoWeightedContrastive:
    """One level's loss; see the module docstring.

    Args:
        space: a :mod:`hiergeo.geometry.spaces` space: called as ``space(z [B, D],
            e [B, K, D]) -> [B, K]`` distances, and ``.pair`` / ``.matrix`` for
            :meth:`full` and :meth:`grouped`.
        tau: temperature.
        sigma_km: distance scale of the negative weights (``float("inf")`` allowed).
        lam: how much a negative at distance 0 is up-weighted, ``form="paper"`` only;
            ``0`` gives plain InfoNCE.
        form: ``"paper"`` (``w = 1 + lam exp(-km/sigma)``) or ``"page"``
            (``w = exp(-km/sigma)``).
    """

    def __init__(self, space, tau: float = 0.1, sigma_km: float = 1000.0,
                 lam: float = 1.0, form: str = "paper"):
        if not tau > 0 or not sigma_km > 0:
            raise ValueError(f"tau and sigma_km must be positive, got {tau}, {sigma_km}")
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        if form not in WEIGHT_FORMS:
            raise ValueError(f"form must be one of {', '.join(WEIGHT_FORMS)}, not {form!r}")
        self.space = space
        self.tau = float(tau)
        self.sigma_km = float(sigma_km)
        self.lam = float(lam)
        self.form = form

    #: ``loss.learn``'s names -> this loss's attributes
    SCALARS = {"tau": "tau", "lam": "lam", "sigma": "sigma_km"}

    def with_scalars(self, **values: torch.Tensor) -> GeoWeightedContrastive:
        """A copy whose ``tau``, ``lam`` or ``sigma`` (sigma_km) are the given 0-d tensors,
        so that the loss passes gradients to them (learnt scalars, ``loss.learn``). Not for
        :meth:`full` with ``block`` (its streamed backward passes no gradient to them)."""
        out = copy.copy(self)
        for name, v in values.items():
            setattr(out, self.SCALARS[name], v)
        return out

    def log_weight(self, km: torch.Tensor) -> torch.Tensor:
        """``log w`` for negatives at ``km`` (float64 in, float64 out)."""
        if self.form == "page":
            return -km / self.sigma_km
        # log(1 + lam e^{-x}); e^{-x} <= 1, so log1p is exact enough and never overflows
        return torch.log1p(self.lam * torch.exp(-km / self.sigma_km))

    def __call__(self, z: torch.Tensor, cand_points: torch.Tensor, cand_latlon: torch.Tensor,
                 latlon: torch.Tensor, valid: torch.Tensor | None = None,
                 log_share: torch.Tensor | None = None) -> dict:
        """Mean loss over the batch.

        Args:
            z: ``[B, D]`` sample embeddings in the ball.
            cand_points: ``[B, K, D]`` candidate entity points, the positive at column 0.
            cand_latlon: ``[B, K, 2]`` candidate centroids (degrees).
            latlon: ``[B, 2]`` sample locations (degrees).
            valid: ``[B, K]`` bool, False for columns to leave out (column 0 must be True).
            log_share: ``[B, K]`` log of how many negatives each column stands for (importance
                weights of sampled candidates); None: every column stands for itself. Column 0
                is ignored.
        Returns:
            ``{"loss": scalar, "per_sample": [B], "logits": [B, K]}``.

        See :meth:`full` for candidates shared by the whole batch.
        """
        logits = (-self.space(z, cand_points) / self.tau).to(z.dtype)
        km = haversine_km_torch(latlon[:, None, 0], latlon[:, None, 1], cand_latlon[..., 0],
                                cand_latlon[..., 1])
        log_w = self.log_weight(km)
        if log_share is not None:
            log_w = log_w + log_share.to(log_w.dtype)
        log_w = log_w.to(logits.dtype)
        log_w[:, 0] = 0.0  # the positive is not weighted
        scores = logits + log_w
        if valid is not None:
            if not bool(valid[:, 0].all()):
                raise ValueError("column 0 (the positive) must be valid in every row")
            scores = scores.masked_fill(~valid, float("-inf"))
        loss = -logits[:, 0] + torch.logsumexp(scores, dim=1)
        return {"loss": loss.mean(), "per_sample": loss, "logits": logits}

    def full(self, z: torch.Tensor, points: torch.Tensor, points_latlon: torch.Tensor,
             latlon: torch.Tensor, target: torch.Tensor, block: int | None = None) -> dict:
        """The same loss with one candidate table for the whole batch (all entities of a
        level): ``points [N, D]``, ``points_latlon [N, 2]``, ``target [B]`` the row of each
        sample's positive. Needs ``space.matrix``.

        ``block=None`` scores the whole table at once: 7 float64 ``[B, N]`` tensors live
        until backward, 10 to 12 at the peak (``benchmarks/bench_loss_memory.py``).
        ``block=k`` streams the table ``k`` entities at a time (:class:`_StreamingLSE`): the
        same value and gradients in ``O(B x k)`` memory, for a second pass over the table in
        backward (:func:`block_size` picks ``k`` from memory). The positive's logit then comes
        from ``space.pair`` rather than the matrix form, which differ by rounding (see
        :meth:`~hiergeo.geometry.spaces.Space.matrix`).

        Returns:
            ``{"loss", "per_sample" [B], "logits" [B, N]}``; without ``"logits"`` when
            ``block`` is given.
        """
        if block is not None:
            if block < 1:
                raise ValueError(f"block must be >= 1, got {block}")
            lse = _StreamingLSE.apply(z, points, latlon, points_latlon, target, self, block)
            pos = (-self.space.pair(z.to(torch.float64), points[target].to(torch.float64))
                   / self.tau).to(z.dtype)
            loss = lse - pos
            return {"loss": loss.mean(), "per_sample": loss}
        logits = (-self.space.matrix(z, points) / self.tau).to(z.dtype)
        km = haversine_matrix_km(latlon, points_latlon)
        log_w = self.log_weight(km).to(logits.dtype)
        rows = torch.arange(len(z), device=z.device)
        log_w[rows, target] = 0.0
        loss = -logits[rows, target] + torch.logsumexp(logits + log_w, dim=1)
        return {"loss": loss.mean(), "per_sample": loss, "logits": logits}

    def _block_log_weight(self, latlon: torch.Tensor, points_latlon: torch.Tensor,
                          target: torch.Tensor, start: int, dtype: torch.dtype) -> torch.Tensor:
        """``log w [B, k]`` of the entities ``start .. start + k`` (``points_latlon`` holds
        just those), 0 at each row's positive where it lies in this block."""
        with torch.no_grad():
            log_w = self.log_weight(haversine_matrix_km(latlon, points_latlon)).to(dtype)
            k = log_w.shape[1]
            col = (target - start).clamp(0, k - 1)[:, None]
            inside = ((target >= start) & (target < start + k))[:, None]
            # no boolean indexing: keeps the device free of host syncs
            return log_w.scatter_(1, col, torch.where(inside, 0.0, log_w.gather(1, col)))

    def _block_scores(self, z: torch.Tensor, points: torch.Tensor,
                      log_w: torch.Tensor) -> torch.Tensor:
        return (-self.space.matrix(z, points) / self.tau).to(z.dtype) + log_w

    def grouped(self, z: torch.Tensor, cand_points: torch.Tensor, cand_latlon: torch.Tensor,
                latlon: torch.Tensor, query: torch.Tensor, positive: torch.Tensor,
                check: bool = True) -> dict:
        """The same loss with candidates as flat pairs, for groups of uneven size: pair m
        sets query ``z[query[m]]`` against ``cand_points[m]`` (``[M, D]``, centroid
        ``cand_latlon[m]``); ``positive [M]`` marks each query's positive, exactly one per
        query. Memory and time grow with M, not with ``B x`` the largest group. Returns
        ``{"loss", "per_sample" [B]}``. ``check=False`` skips checking the one positive per
        query (two device syncs), for callers whose pairs guarantee it
        (:meth:`~hiergeo.model.hierarchy.Hierarchy.sibling_pairs` does)."""
        B = len(z)
        if check and (int(positive.sum()) != B or not bool(
                torch.bincount(query[positive], minlength=B).eq(1).all())):
            raise ValueError("every query needs exactly one positive pair")
        logits = (-self.space.pair(z[query].to(torch.float64),
                                      cand_points.to(torch.float64)) / self.tau).to(z.dtype)
        km = haversine_km_torch(latlon[query, 0], latlon[query, 1], cand_latlon[:, 0],
                                cand_latlon[:, 1])
        log_w = torch.where(positive, 0.0, self.log_weight(km)).to(logits.dtype)
        scores = logits + log_w
        top = torch.full((B,), -torch.inf, dtype=scores.dtype, device=z.device).scatter_reduce(
            0, query, scores.detach(), reduce="amax")
        lse = top + torch.zeros(B, dtype=scores.dtype, device=z.device).index_add(
            0, query, torch.exp(scores - top[query])).log()
        pos_logit = torch.zeros(B, dtype=logits.dtype, device=z.device).index_add(
            0, query[positive], logits[positive])
        loss = lse - pos_logit
        return {"loss": loss.mean(), "per_sample": loss}


class _StreamingLSE(torch.autograd.Function):
    """``logsumexp_j(s_j + log w_j)`` over the entity table in blocks of columns.

    Forward keeps a running maximum and sum per row (float64) and saves only its inputs and
    the result ``lse [B]``. Backward recomputes each block's scores with grad enabled and
    pulls ``grad_lse x softmax = grad_lse x exp(s - lse)`` back through them with
    :func:`torch.autograd.grad`, adding the block's share to the gradients of ``z`` and
    ``points``. Nothing of size ``[B, N]`` ever exists; first-order gradients only.
    """

    @staticmethod
    def forward(ctx, z, points, latlon, points_latlon, target, loss, block):
        B, N = len(z), len(points)
        top = torch.full((B,), -torch.inf, dtype=torch.float64, device=z.device)
        total = torch.zeros(B, dtype=torch.float64, device=z.device)
        for start in range(0, N, block):
            stop = min(start + block, N)
            log_w = loss._block_log_weight(latlon, points_latlon[start:stop], target, start,
                                           z.dtype)
            s = loss._block_scores(z, points[start:stop], log_w).to(torch.float64)
            del log_w
            new_top = torch.maximum(top, s.amax(dim=1))
            total = total * torch.exp(top - new_top) + s.sub_(new_top[:, None]).exp_().sum(1)
            top = new_top
            del s
        lse = (top + torch.log(total)).to(z.dtype)
        ctx.save_for_backward(z, points, latlon, points_latlon, target, lse)
        ctx.loss, ctx.block = loss, block
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lse):
        z, points, latlon, points_latlon, target, lse = ctx.saved_tensors
        need_z, need_p = ctx.needs_input_grad[:2]
        grad_z = torch.zeros_like(z) if need_z else None
        grad_p = torch.zeros_like(points) if need_p else None
        if not (need_z or need_p):
            return None, None, None, None, None, None, None
        zd = z.detach().requires_grad_(need_z)
        for start in range(0, len(points), ctx.block):
            stop = min(start + ctx.block, len(points))
            log_w = ctx.loss._block_log_weight(latlon, points_latlon[start:stop], target, start,
                                               z.dtype)
            pd = points[start:stop].detach().requires_grad_(need_p)
            with torch.enable_grad():
                s = ctx.loss._block_scores(zd, pd, log_w)
            del log_w
            # the softmax of the block's scores against the whole row, times grad_lse
            weight = (s.detach() - lse[:, None]).exp_().mul_(grad_lse[:, None])
            inputs = [t for t, need in ((zd, need_z), (pd, need_p)) if need]
            grads = list(torch.autograd.grad(s, inputs, weight))
            del s, weight
            if need_z:
                grad_z += grads.pop(0)
            if need_p:
                grad_p[start:stop] = grads.pop(0)
        return grad_z, grad_p, None, None, None, None, None


def parent_hinge(space, child: torch.Tensor, parent: torch.Tensor,
                 margin: torch.Tensor) -> torch.Tensor:
    """Mean of ``relu(d(child, parent) - margin)``: keeps each entity within ``margin`` (its
    distance to its parent in the initial tree embedding) of its parent while training moves
    both. Zero for a tree that has not moved."""
    if len(child) == 0:
        return child.new_zeros((), dtype=torch.float64)
    d = space.pair(child.to(torch.float64), parent.to(torch.float64))
    return torch.relu(d - margin.to(torch.float64)).mean()
