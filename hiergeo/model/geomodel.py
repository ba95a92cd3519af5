"""Encoder -> MLP head -> tangent vector (norm clipped) -> query point in the space; and the
entity table, a geoopt ``ManifoldParameter`` in float64 initialised from the tree embedding.

Encoders come from a small registry by name: ``"features"`` (identity: cached feature
vectors, the published setup) or ``"timm"`` (a :func:`~hiergeo.model.create_backbone`
backbone, frozen or fine-tuned, for end-to-end runs on images).
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry.spaces import Space
from ..registry import registrar

#: encoders by name, filled by :func:`register_encoder`
ENCODERS: dict = {}
register_encoder = registrar(ENCODERS)


class FeatureEncoder(nn.Module):
    """Identity on cached features (``[B, in_dim]`` float)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[-1]}, the model expects "
                             f"{self.dim}")
        return x.float()


class TimmEncoder(nn.Module):
    """A timm backbone's pooled features; ``freeze=True`` keeps it fixed (and in eval mode)."""

    def __init__(self, backbone, freeze: bool = True):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.freeze = bool(freeze)
        self.dim = backbone.dim
        if self.freeze:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze:
            with torch.no_grad():
                return self.backbone.features(x).float()
        return self.backbone.features(x).float()


@register_encoder("features")
def _features_encoder(in_dim: int, **_) -> nn.Module:
    return FeatureEncoder(in_dim)


@register_encoder("timm")
def _timm_encoder(in_dim: int = 0, *, backbone: str, weights=None, allow_download=False,
                  random_weights=False, freeze=True, **_) -> nn.Module:
    from .backbones import create_backbone

    bb = create_backbone(backbone, weights=weights, allow_download=allow_download,
                         random_weights=random_weights)
    return TimmEncoder(bb, freeze=freeze)


def create_encoder(name: str, **kwargs) -> nn.Module:
    if name not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, not {name!r}")
    return ENCODERS[name](**kwargs)


class Head(nn.Module):
    """LayerNorm -> (Linear -> GELU -> Dropout) x (layers - 1) -> Linear to the tangent space.

    The last layer starts small, so first queries sit near the origin (equally far from every
    entity of a level) rather than at an arbitrary point near the edge."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"head layers must be >= 1, got {layers}")
        mods: list[nn.Module] = [nn.LayerNorm(in_dim)]
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        last = nn.Linear(d, out_dim)
        nn.init.normal_(last.weight, std=0.1 / d**0.5)
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


def level_query(z: torch.Tensor, level: int) -> torch.Tensor:
    """Level ``level``'s query points from a model's output: ``z [B, D]`` (one point for
    every level) or ``z [B, L, D]`` (one point per level, ``queries="per_level"``)."""
    return z[:, level] if z.dim() == 3 else z


QUERY_MODES = ("shared", "per_level")


class GeoModel(nn.Module):
    """``forward(x)`` -> float64 query points, ``[B, point_dim]`` (``queries="shared"``: one
    point scored against every level) or ``[B, 4, point_dim]`` (``"per_level"``: one point per
    level, from one head whose last layer has a block of ``dim`` outputs per level; take a
    level's with :func:`level_query`); ``entities`` the table.

    Args:
        encoder: module mapping inputs to ``[B, encoder.dim]`` features.
        space: a :class:`~hiergeo.geometry.spaces.Space`.
        entity_init: float64 ``[N, point_dim]`` points on the space (row i = entity id i).
        dim: dimension of the space (the head outputs ``dim`` tangent coordinates).
        train_entities: let the optimiser move entity points.
        queries: ``"shared"`` or ``"per_level"`` (see above).
        data_entities: a :class:`~hiergeo.model.entity_map.DataEntities` (``model.entities=
            data``): entity points are computed from it (:meth:`entity_rows`) and the table
            ``entities`` is a frozen copy of them for prediction (:meth:`refresh_entities_`).
        learnt: per level, the loss scalars trained with the head (``loss.learn``):
            ``{"tau": [4], "lam": [4], "sigma": [4]}`` starting values (positive); each is
            held as its logarithm, ``log_<name>`` (:meth:`loss_scalars`).
    """

    def __init__(self, encoder: nn.Module, space: Space, entity_init: torch.Tensor, *,
                 dim: int, hidden: int = 512, layers: int = 2, dropout: float = 0.0,
                 train_entities: bool = True, queries: str = "shared",
                 data_entities: nn.Module | None = None, learnt: dict | None = None):
        from ..geometry.poincare import import_geoopt

        geoopt = import_geoopt()

        super().__init__()
        if queries not in QUERY_MODES:
            raise ValueError(f"queries must be one of {', '.join(QUERY_MODES)}, not {queries!r}")
        self.encoder = encoder
        self.space = space
        self.n_queries = 4 if queries == "per_level" else 1
        self.head = Head(encoder.dim, dim * self.n_queries, hidden, layers, dropout)
        self.data_entities = data_entities
        self.entities = geoopt.ManifoldParameter(
            entity_init.to(torch.float64).clone(), manifold=space.manifold(),
            requires_grad=train_entities and data_entities is None)
        self.learnt_names = tuple(sorted(learnt or {}))
        for name, values in (learnt or {}).items():
            v = torch.as_tensor(values, dtype=torch.float64)
            if v.shape != (4,) or not bool((v > 0).all() & torch.isfinite(v).all()):
                raise ValueError(f"learnt {name} needs 4 positive finite values, got {values}")
            self.register_parameter(f"log_{name}", nn.Parameter(v.log()))
        # each entity's allowed distance to its parent (the parent term; set by the trainer)
        self.register_buffer("parent_margin",
                             torch.zeros(len(entity_init), dtype=torch.float64))
        # per-level temperature scaling fitted on held-out data after training (1 = none):
        # prediction divides level l's logits by tau_l * level_temperature[l]
        self.register_buffer("level_temperature", torch.ones(4, dtype=torch.float64))
        # per-level weight of the retrieval memory in prediction and the temperature of the
        # mixture (hiergeo.predict.memory), fitted on held-out data after training; weight 0
        # = the model alone
        self.register_buffer("memory_weight", torch.zeros(4, dtype=torch.float64))
        self.register_buffer("mixture_temperature", torch.ones(4, dtype=torch.float64))

    #: buffers fitted after training; a checkpoint written before one existed loads with its
    #: neutral value (temperature 1, memory weight 0: the model alone)
    OPTIONAL_BUFFERS = ("level_temperature", "memory_weight", "mixture_temperature")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.OPTIONAL_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def uses_memory(self) -> bool:
        """Whether prediction mixes in a retrieval memory (a fitted weight above 0)."""
        return bool(self.memory_weight.gt(0).any())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query_from_features(self.encoder(x))

    def query_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Query points from encoder features (``forward`` is this after the encoder)."""
        v = self.head(f)
        if self.n_queries == 1:
            return self.space.query(v)
        return self.space.query(v.reshape(len(v), self.n_queries, -1))

    def entity_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Points of entities ``idx [k]`` -> ``[k, point_dim]`` float64, with gradients:
        the trained table's rows, or (``data_entities``) computed from the entities' data."""
        if self.data_entities is None:
            return self.entities[idx]
        # a step's candidates repeat entities (sibling groups): map each one once
        uniq, inverse = torch.unique(idx, return_inverse=True)
        return self.space.query(self.data_entities(uniq))[inverse]

    @torch.no_grad()
    def refresh_entities_(self, chunk: int = 65536) -> None:
        """``data_entities``: write every entity's computed point into the ``entities``
        table that prediction and export read (a no-op for a trained table)."""
        if self.data_entities is None:
            return
        n = len(self.entities)
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n), device=self.entities.device)
            self.entities.data[idx] = self.entity_rows(idx).to(self.entities.dtype)

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; switching to eval mode refreshes a computed table."""
        super().train(mode)
        if not mode:
            self.refresh_entities_()
        return self

    def loss_scalars(self) -> dict[str, torch.Tensor]:
        """The learnt loss scalars, ``{"tau" | "lam" | "sigma": [4] float64}`` (positive;
        with gradients), for the names in ``learnt``."""
        return {name: getattr(self, f"log_{name}").exp() for name in self.learnt_names}

    @torch.no_grad()
    def learnt_tau_scale(self, tau) -> torch.Tensor:
        """``[4]`` float64: the learnt tau over ``tau`` (the config's, which prediction
        multiplies by ``level_temperature``); ones when tau is not learnt."""
        dev = self.level_temperature.device
        if "tau" not in self.learnt_names:
            return torch.ones(4, dtype=torch.float64, device=dev)
        return (self.log_tau.exp() / torch.as_tensor(tau, dtype=torch.float64,
                                                     device=self.log_tau.device)).to(dev)

    @torch.no_grad()
    def fold_learnt_tau_(self, tau) -> None:
        """Make prediction use the learnt temperature: ``level_temperature`` becomes
        :meth:`learnt_tau_scale` (calibration then fits on top of it)."""
        if "tau" in self.learnt_names:
            self.level_temperature.copy_(self.learnt_tau_scale(tau))

    @torch.no_grad()
    def project_entities_(self) -> None:
        """Pull entity points back onto the space (after loading or optimiser steps)."""
        self.entities.data.copy_(self.entities.manifold.projx(self.entities.data))
