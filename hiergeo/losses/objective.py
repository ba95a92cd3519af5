"""The training objective: one loss per level and the parent term, combined into named terms.

Built once per run (:meth:`Objective.build`) from the loss settings, the space, the hierarchy
and where the run trains; called once per step with the batch's query points
(:meth:`Objective.__call__`), it returns ``{"loss": total, "loss_country": ..., ...}``.

A loss function is a class registered by name, as the spaces are (:mod:`hiergeo.registry`)::

    from hiergeo.losses import LevelLoss, LevelQueries, register_loss

    @register_loss("nearest")
    class Nearest(LevelLoss):
        def __call__(self, q: LevelQueries) -> torch.Tensor:
            return self.space.pair(q.z, q.rows(q.positive)).mean()

and ``loss.function=nearest`` trains with it: nothing else changes (the config checks the name
against :data:`LOSS_CLASSES` when it is validated). :mod:`hiergeo.losses.levels` holds the
shipped ones: ``geo`` and the pytorch-metric-learning ablations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from gazetteer.keys import LEVELS

from ..model.geomodel import level_query
from ..registry import registrar
from .candidates import CandidateSampler
from .contrastive import parent_hinge

#: ``loss.function`` -> its :class:`LevelLoss` class (``@register_loss("name")``)
LOSS_CLASSES: dict[str, type[LevelLoss]] = {}
register_loss = registrar(LOSS_CLASSES)


@dataclass(frozen=True, kw_only=True)
class LevelSetup:
    """What one level's loss is built from, once per run.

    Attributes:
        cfg: the loss settings (``hiergeo.config.LossConfig``; per-level lists are indexed
            by ``level``).
        level: 0 (country) .. 3 (city).
        space: the space of the query and entity points.
        hier: the :class:`~hiergeo.model.hierarchy.Hierarchy` (active entities, parents,
            coordinates), on the run's device.
        full: every active entity of the level is a candidate (else ``sampler`` draws them).
        sampler: the candidate sampler, when some level samples.
        budget_bytes: what a blocked loss's temporaries may take (None: the device's
            default, :func:`~hiergeo.losses.contrastive.block_size`).
    """

    cfg: object
    level: int
    space: object
    hier: object
    full: bool
    sampler: CandidateSampler | None = None
    budget_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class LevelQueries:
    """One level's share of a batch: the samples with an active entity at that level.

    Attributes:
        level: 0 (country) .. 3 (city).
        z: ``[b, D]`` float64 query points for this level.
        positive: ``[b]`` each sample's entity id at this level.
        latlon: ``[b, 2]`` the samples' coordinates (degrees).
        rows: entity ids -> their points in the trained table (with the gradient the table's
            optimiser expects: sparse or dense).
        gen: the step's random generator (for sampled candidates).
        scalars: the level's learnt loss scalars (``loss.learn``), ``{"tau" | "lam" |
            "sigma": 0-d float64 tensor}``, with gradients; empty when none is learnt.
    """

    level: int
    z: torch.Tensor
    positive: torch.Tensor
    latlon: torch.Tensor
    rows: Callable[[torch.Tensor], torch.Tensor]
    gen: torch.Generator
    scalars: dict = field(default_factory=dict)


class LevelLoss:
    """One level's loss: built once per run from a :class:`LevelSetup`, called per step with
    :class:`LevelQueries`, returns a scalar.

    Class attributes a loss may set: ``samples_candidates`` (it scores the candidates
    ``loss.candidates`` chooses, so ``sampled`` applies to it) and ``default_margin`` (it takes
    ``loss.margin``, with this default; None: ``loss.margin`` does not apply).
    """

    samples_candidates: ClassVar[bool] = False
    default_margin: ClassVar[float | None] = None

    def __init__(self, setup: LevelSetup):
        self.setup = setup
        self.cfg, self.level = setup.cfg, setup.level
        self.space, self.hier = setup.space, setup.hier

    def __call__(self, q: LevelQueries) -> torch.Tensor:
        raise NotImplementedError


def full_levels(loss_cfg, hier, device: torch.device, batch: int) -> list[bool]:
    """Per level, whether the loss scores every entity (True) or sampled candidates.

    Both estimate the same objective (the sampled denominator is an unbiased estimate of the
    full one, :mod:`hiergeo.losses.candidates`), so this choice trades memory for variance and
    never changes what is optimised: ``full`` and ``sampled`` are honoured on any device;
    ``auto`` scores every entity on a GPU and, on a CPU, where ``batch x level size`` is at
    most ``loss.full_max``."""
    mode = loss_cfg.candidates
    if mode == "full":
        return [True] * len(LEVELS)
    if mode == "sampled":
        return [False] * len(LEVELS)
    if torch.device(device).type == "cuda":
        return [True] * len(LEVELS)
    return [batch * len(ids) <= loss_cfg.full_max for ids in hier.level_ids]


class Objective:
    """The weighted sum of the levels' losses (``loss.weights``) and the parent term
    (``loss.parent_weight``), as named terms.

    Args:
        loss_cfg: the loss settings (``hiergeo.config.LossConfig``).
        levels: per level its :class:`LevelLoss`, None where the level's weight is 0.
        space, hier: as in :class:`LevelSetup`.
        sparse: the entity table takes sparse gradients (its optimiser is geoopt's
            ``SparseRiemannianAdam``).
    """

    def __init__(self, loss_cfg, levels: list[LevelLoss | None], space, hier, *, sparse: bool):
        self.cfg, self.levels, self.space, self.hier = loss_cfg, levels, space, hier
        self.sparse = sparse
        self.kind = LOSS_CLASSES[loss_cfg.function]
        #: per level: every entity a candidate (True) or sampled ones; None: weight 0
        self.full = [None if lv is None else lv.setup.full for lv in levels]

    @classmethod
    def build(cls, loss_cfg, space, hier, *, device, batch: int, sparse: bool,
              budget_bytes: int | None = None, full: list[bool] | None = None) -> Objective:
        """The run's objective: each level's loss (``loss.function``) with its candidates,
        built once. ``full``: per level, every entity a candidate or sampled ones (None:
        :func:`full_levels` for a process's ``batch`` on ``device``)."""
        if loss_cfg.function not in LOSS_CLASSES:
            raise ValueError(f"loss.function={loss_cfg.function} is not registered here (one "
                             f"of {', '.join(LOSS_CLASSES)}): import the module that "
                             "registers it (@register_loss) before training or resuming")
        kind = LOSS_CLASSES[loss_cfg.function]
        if full is None:
            full = full_levels(loss_cfg, hier, device, batch)
        sampler = None
        if kind.samples_candidates and loss_cfg.scope == "level" and not all(full):
            sampler = CandidateSampler(hier)
        levels = [kind(LevelSetup(cfg=loss_cfg, level=j, space=space, hier=hier, full=full[j],
                                  sampler=sampler, budget_bytes=budget_bytes))
                  if loss_cfg.weights[j] > 0 else None for j in range(len(LEVELS))]
        return cls(loss_cfg, levels, space, hier, sparse=sparse)

    @property
    def uses_candidates(self) -> bool:
        """Whether ``loss.candidates`` applies: a loss that scores candidates, over the
        level (not the siblings)."""
        return self.kind.samples_candidates and self.cfg.scope == "level"

    def describe_candidates(self) -> str:
        """``"country all, region all, subregion sampled, city off"`` (off: weight 0)."""
        word = {True: "all", False: "sampled", None: "off"}
        return ", ".join(f"{lvl} {word[f]}" for lvl, f in zip(LEVELS, self.full, strict=True))

    def __call__(self, entities, z: torch.Tensor, ids: torch.Tensor,
                 latlon: torch.Tensor, gen: torch.Generator,
                 parent_margin: torch.Tensor | None = None,
                 scalars: dict | None = None) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch.

        Args:
            entities: the entity table ``[N, D]`` (a parameter when trained), or a function
                ``ids [k] -> [k, D]`` computing the rows asked for (``model.entities=data``,
                :meth:`~hiergeo.model.geomodel.GeoModel.entity_rows`; no parent term: its
                margins come from the tree).
            z: query points, ``[B, D]`` or ``[B, 4, D]`` (one per level), float64.
            ids: ``[B, 4]`` each sample's entity ids (-1: none at that level).
            latlon: ``[B, 2]`` the samples' coordinates.
            gen: the step's generator.
            parent_margin: ``[N]`` each entity's allowed distance to its parent (the parent
                term; None or an untrained table: no parent term).
            scalars: learnt loss scalars, ``{"tau" | "lam" | "sigma": [4]}`` (``loss.learn``).
        """
        computed = callable(entities)
        if computed:
            rows = entities
        else:
            def rows(idx):  # entity points, with a sparse gradient for the sparse optimiser
                return torch.nn.functional.embedding(idx, entities, sparse=self.sparse)

        hier, cfg = self.hier, self.cfg
        terms = {}
        total = z.new_zeros((), dtype=torch.float64)
        for j, (lvl, level_loss) in enumerate(zip(LEVELS, self.levels, strict=True)):
            if level_loss is None:  # weight 0: decided at build time, no sync here
                continue
            pos = ids[:, j]
            keep = (pos >= 0) & hier.active[pos.clamp_min(0)]
            if not bool(keep.any()):
                continue
            q = LevelQueries(level=j, z=level_query(z, j)[keep], positive=pos[keep],
                             latlon=latlon[keep], rows=rows, gen=gen,
                             scalars={k: v[j] for k, v in (scalars or {}).items()})
            term = level_loss(q)
            terms[f"loss_{lvl}"] = term
            total = total + cfg.weights[j] * term
        if (cfg.parent_weight > 0 and parent_margin is not None and not computed
                and entities.requires_grad):
            kids = torch.unique(ids[:, 1:][ids[:, 1:] >= 0])
            term = parent_hinge(self.space, rows(kids), rows(hier.parent[kids]),
                                parent_margin[kids])
            terms["loss_parent"] = term
            total = total + cfg.parent_weight * term
        terms["loss"] = total
        return terms
