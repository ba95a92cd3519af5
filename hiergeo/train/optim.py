"""The optimisers of a run: AdamW on the head (and a trained encoder), geoopt's Riemannian
Adam on the entity table (sparse or dense), both on one warm-up + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import Config


def lr_lambda(cfg: Config, total: int):
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


def sparse_entities(cfg: Config, device) -> bool:
    """Whether the entity table takes sparse gradients and geoopt's SparseRiemannianAdam:
    ``optim.entity_optimizer`` sparse or dense, or auto = sparse in a single CPU process,
    else dense (DDP cannot reduce sparse gradients, over NCCL or gloo)."""
    if cfg.optim.entity_optimizer == "auto":
        ddp = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        return torch.device(device).type == "cpu" and not ddp
    return cfg.optim.entity_optimizer == "sparse"


@dataclass(frozen=True, kw_only=True)
class Optimisers:
    """The run's optimisers and schedules.

    Attributes:
        head_params: the parameters AdamW trains (the head, a trained encoder).
        head: AdamW; ``head_sched`` its schedule.
        entities: the entity table's Riemannian Adam (None when the table is frozen);
            ``entity_sched`` its schedule.
        sparse: the table takes sparse gradients (``SparseRiemannianAdam``).
    """

    head_params: list
    head: torch.optim.Optimizer
    head_sched: object
    entities: torch.optim.Optimizer | None
    entity_sched: object | None
    sparse: bool

    def zero_grad(self) -> None:
        self.head.zero_grad(set_to_none=True)
        if self.entities is not None:
            self.entities.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Both optimisers' and schedules' steps."""
        self.head.step()
        self.head_sched.step()
        if self.entities is not None:
            self.entities.step()
            self.entity_sched.step()

    def state_dict(self) -> dict:
        state = {"opt": self.head.state_dict(), "sched": self.head_sched.state_dict()}
        if self.entities is not None:
            state["ent_opt"] = self.entities.state_dict()
            state["ent_sched"] = self.entity_sched.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["opt"])
        self.head_sched.load_state_dict(state["sched"])
        if self.entities is not None:
            self.entities.load_state_dict(state["ent_opt"])
            self.entity_sched.load_state_dict(state["ent_sched"])

    def lr(self) -> float:
        return self.head_sched.get_last_lr()[0]


def build_optimisers(cfg: Config, model, total: int, device) -> Optimisers:
    """AdamW on the head (and a trained encoder), geoopt's Riemannian Adam on the entity
    table (sparse or dense, see ``optim.entity_optimizer``), both on :func:`lr_lambda`'s
    schedule over ``total`` steps. Settles ``optim.entity_optimizer=auto`` in ``cfg``."""
    from ..geometry.poincare import import_geoopt

    geoopt = import_geoopt()

    head_params = [p for n, p in model.named_parameters() if p.requires_grad
                   and n != "entities"]
    opt = torch.optim.AdamW(head_params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ent_opt = None
    # a computed table (model.entities=data) has no optimiser of its own
    sparse = sparse_entities(cfg, device) and model.entities.requires_grad
    # "auto" is settled once, at the start, and written to config.yaml: a resumed run keeps
    # its optimiser (whose state the checkpoint holds) on whatever hardware it resumes
    cfg.optim.entity_optimizer = "sparse" if sparse else "dense"
    if model.entities.requires_grad and sparse:
        ent_opt = geoopt.optim.SparseRiemannianAdam([model.entities], lr=cfg.optim.entity_lr)
    elif model.entities.requires_grad:
        ent_opt = geoopt.optim.RiemannianAdam([model.entities], lr=cfg.optim.entity_lr,
                                              stabilize=cfg.optim.stabilize)
    lam = lr_lambda(cfg, total)
    return Optimisers(head_params=head_params, head=opt,
                      head_sched=torch.optim.lr_scheduler.LambdaLR(opt, lam),
                      entities=ent_opt,
                      entity_sched=(torch.optim.lr_scheduler.LambdaLR(ent_opt, lam)
                                    if ent_opt else None),
                      sparse=sparse)
