"""The entity tree as tensors, for training (candidate sampling, per-level tables) and for
prediction (children of a beam). Built from a gazetteer, optionally restricted to an
``active`` subset of entities (e.g. those seen in training): inactive entities are never
candidates and never predicted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gazetteer.keys import LEVELS


@dataclass
class Hierarchy:
    """Arrays by entity id (row i = entity id i of the gazetteer).

    Attributes:
        parent: ``[N]`` parent id, -1 for the root.
        depth: ``[N]`` 0 for the root, 1 country ... 4 city.
        latlon: ``[N, 2]`` float64 centroids in degrees (the loss's distance weights).
        point_latlon: ``[N, 2]`` float64 prediction points in degrees: a labelling point of
            the entity's own (for a city, the member place nearest its centroid), so that a
            predicted entity's coordinates reverse-geocode back to it; see
            :func:`gazetteer.tree.prediction_points`.
        ancestors: ``[N, 4]`` id of the entity's ancestor (or itself) at each level, -1 below
            its own depth.
        active: ``[N]`` bool.
        level_ids: per level, the active ids of that level (sorted).
        pos_in_level: ``[N]`` position of each entity in its level's ``level_ids`` (-1 if
            inactive).
        child_start, child_count, child_list: active children of each id, as
            ``child_list[child_start[i] : child_start[i] + child_count[i]]``.
    """

    parent: torch.Tensor
    depth: torch.Tensor
    latlon: torch.Tensor
    point_latlon: torch.Tensor
    ancestors: torch.Tensor
    active: torch.Tensor
    level_ids: list[torch.Tensor]
    pos_in_level: torch.Tensor
    child_start: torch.Tensor
    child_count: torch.Tensor
    child_list: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.parent)

    @classmethod
    def from_gazetteer(cls, gz, active: np.ndarray | None = None) -> Hierarchy:
        return cls.from_table(gz.entities, active)

    @classmethod
    def from_table(cls, e, active: np.ndarray | None = None) -> Hierarchy:
        """From an entity table with the gazetteer's columns ``parent_id, depth, lat, lon,
        point_lat, point_lon`` (row i = entity id i, the root at depth 0): a gazetteer's, or
        an exported model's (:mod:`hiergeo.export`), which needs no gazetteer."""
        from gazetteer.tree import ancestors_table

        parent = e["parent_id"].to_numpy(np.int64).copy()
        n = len(parent)
        act = np.ones(n, bool) if active is None else np.asarray(active, bool).copy()
        if len(act) != n:
            raise ValueError(f"active mask has {len(act)} rows for {n} entities")
        return cls._build(
            torch.from_numpy(parent), torch.from_numpy(e["depth"].to_numpy(np.int64).copy()),
            torch.from_numpy(e[["lat", "lon"]].to_numpy(np.float64).copy()),
            torch.from_numpy(e[["point_lat", "point_lon"]].to_numpy(np.float64).copy()),
            torch.from_numpy(ancestors_table(e).astype(np.int64)), act)

    @classmethod
    def _build(cls, parent: torch.Tensor, depth: torch.Tensor, latlon: torch.Tensor,
               point_latlon: torch.Tensor, ancestors: torch.Tensor, act: np.ndarray
               ) -> Hierarchy:
        """The per-level tables and children lists of the entities ``act`` (bool ``[N]``,
        numpy; the root and every active entity's ancestors are made active too)."""
        from gazetteer.tree import children_csr

        par, dep = parent.cpu().numpy(), depth.cpu().numpy()
        n = len(par)
        act = act.copy()
        act[dep == 0] = True
        # an active entity keeps its ancestors active, or descent could never reach it
        for _ in range(len(LEVELS)):
            up = par[act & (par >= 0)]
            act[up] = True
        level_ids, pos = [], np.full(n, -1, np.int64)
        for d in range(1, len(LEVELS) + 1):
            ids = np.flatnonzero((dep == d) & act)
            pos[ids] = np.arange(len(ids))
            level_ids.append(torch.from_numpy(ids))
        kids, bounds = children_csr(par, act)
        start, count = bounds[:-1].copy(), np.diff(bounds)
        dev = parent.device
        return cls(parent=parent, depth=depth, latlon=latlon, point_latlon=point_latlon,
                   ancestors=ancestors, active=torch.from_numpy(act).to(dev),
                   level_ids=[t.to(dev) for t in level_ids],
                   pos_in_level=torch.from_numpy(pos).to(dev),
                   child_start=torch.from_numpy(start).to(dev),
                   child_count=torch.from_numpy(count).to(dev),
                   child_list=torch.from_numpy(kids).to(dev))

    def restricted(self, allowed) -> Hierarchy:
        """This hierarchy with only the active entities of ``allowed`` (bool ``[N]``) and
        their ancestors active, on the same device: every sibling softmax of a descent in it
        runs over the allowed children alone, so its probabilities are renormalised over
        what is allowed (:mod:`hiergeo.predict.within`). Raises ``ValueError`` when no
        active entity is allowed."""
        allowed = torch.as_tensor(allowed, dtype=torch.bool).cpu().numpy()
        if allowed.shape != (self.n,):
            raise ValueError(f"allowed mask has shape {allowed.shape} for {self.n} entities")
        act = self.active.cpu().numpy() & allowed
        if not act[self.depth.cpu().numpy() > 0].any():
            raise ValueError("no entity the model knows is allowed: nothing to predict")
        return self._build(self.parent, self.depth, self.latlon, self.point_latlon,
                           self.ancestors, act)

    def sibling_pairs(self, pos: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every active child of each ``pos`` entity's parent, the entity itself included, as
        flat pairs ``(query [M], entity [M], is_positive [M])``: the candidates of
        ``loss.scope=siblings`` (:meth:`hiergeo.losses.GeoWeightedContrastive.grouped`) and
        of the calibration fit, whose softmax over them is ``P(entity | parent)``. M is the
        summed sibling-group sizes, at most 2,137 per entity in the world tree (the cities
        of one subregion)."""
        parent = self.parent[pos]
        count = self.child_count[parent]
        query = torch.repeat_interleave(torch.arange(len(pos), device=pos.device), count)
        off = torch.arange(len(query), device=pos.device) - (torch.cumsum(count, 0) - count)[
            query]
        entity = self.child_list[self.child_start[parent][query] + off]
        return query, entity, entity == pos[query]

    def to(self, device) -> Hierarchy:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else [t.to(device) for t in v])
                 for k, v in self.__dict__.items()}
        return Hierarchy(**moved)
