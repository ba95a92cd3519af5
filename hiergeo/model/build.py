"""A model and its entity hierarchy from a run's config (``hiergeo.config.Config``,
read here by attribute only): the trainer builds one to train, evaluation and export one to
load a checkpoint into."""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.spaces import make_space
from .entity_map import DataEntities
from .geomodel import GeoModel, create_encoder
from .hierarchy import Hierarchy


def tree_embedding(cfg, gz):
    """The entity tree's embedding for ``cfg``, from the on-disk cache when a process (this
    run's rank 0, or an earlier run) has made it (:func:`hiergeo.embedding.cached_embed_tree`)."""
    from ..embedding import cached_embed_tree

    m = cfg.model
    opts = {}
    if m.radius_budget is not None:
        opts["radius_budget"] = m.radius_budget
    if m.sibling_margin is not None and m.embedding == "construct":
        opts["margin"] = m.sibling_margin
    return cached_embed_tree(gz, dim=m.dim, c=m.c, method=m.embedding, seed=cfg.run.seed,
                             **opts)


def build_model(cfg, gz, in_dim: int, device, *, init: bool = True,
                active: np.ndarray | None = None) -> tuple[GeoModel, Hierarchy]:
    """The model and the entity hierarchy for ``cfg``; ``init`` embeds the tree for the
    entity table's starting points (skip it when a checkpoint will overwrite them)."""
    m = cfg.model
    space = make_space(m.geometry, m.c, m.max_radius, m.sphere_radius)
    if init:
        emb = tree_embedding(cfg, gz)
        points = space.init_entities(emb.points)
    else:
        points = torch.zeros(len(gz.entities), space.point_dim(m.dim), dtype=torch.float64)
    kw = {"in_dim": in_dim}
    if m.encoder == "timm":
        from .backbones import EMBEDDED

        kw.update(backbone=m.backbone or EMBEDDED, weights=m.weights,
                  allow_download=m.allow_download, random_weights=m.random_weights,
                  freeze=m.freeze_backbone)
    encoder = create_encoder(m.encoder, **kw)
    hier = Hierarchy.from_gazetteer(gz, active)
    data_entities = None
    if m.entities == "data":
        data_entities = DataEntities(hier.n, encoder.dim, m.dim, hidden=m.entity_hidden,
                                     residual=m.entity_residual, latlon=hier.latlon,
                                     depth=hier.depth)
    learnt = {name: list(getattr(cfg.loss, LEARNT_KEYS[name])) for name in cfg.loss.learn}
    model = GeoModel(encoder, space, points, dim=m.dim, hidden=m.hidden, layers=m.layers,
                     dropout=m.dropout, train_entities=m.train_entities,
                     queries=m.queries, data_entities=data_entities,
                     learnt=learnt).to(device)
    return model, hier.to(device)


#: ``loss.learn``'s names -> the loss settings that start them
LEARNT_KEYS = {"tau": "tau", "lam": "lam", "sigma": "sigma_km"}
