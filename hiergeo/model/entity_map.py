"""Entities from data (``model.entities=data``): each entity's point is computed from what is
known about it, not looked up in a free table.

An entity's input vector joins

- its **prototype**: the mean encoder feature of its training samples (every sample counts
  towards its entity at each level), streamed in one pass over the training split
  (:func:`feature_prototypes`); an entity without samples takes the mean of its children's
  prototypes, else its parent's;
- its **coordinates** through a fixed spherical encoding (:func:`spherical_encoding`);
- its **level** (a learnt embedding of its depth),

and a learnt map (an MLP, trained with the head, :class:`DataEntities`) sends it to a tangent
vector, plus an optional learnt per-entity residual, mapped into the space by the space's
``query`` (exponential map at the origin, norm clipped, float64). The prototypes and the
encoding are buffers saved with the model; the points the predictor reads are written into
the model's ``entities`` table (:meth:`hiergeo.model.geomodel.GeoModel.refresh_entities_`),
so prediction and export read a table as they do for ``model.entities=tree``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gazetteer.geo import to_xyz

#: frequencies (cycles per turn) of the sine/cosine features of latitude and longitude
COORD_FREQUENCIES = (1, 2, 4, 8)


def spherical_encoding(latlon: torch.Tensor, freqs=COORD_FREQUENCIES) -> torch.Tensor:
    """``latlon [N, 2]`` degrees -> ``[N, 3 + 4 len(freqs)]`` float64: the unit vector
    ``(x, y, z)``, then ``sin``/``cos`` of ``f x`` latitude and of ``f x`` longitude (radians)
    for each frequency ``f``. Fixed: nothing here is learnt."""
    ll = latlon.to(torch.float64).cpu().numpy()
    xyz = torch.from_numpy(to_xyz(ll[:, 0], ll[:, 1])).to(latlon.device)
    lat = torch.deg2rad(latlon[:, 0].to(torch.float64))
    lon = torch.deg2rad(latlon[:, 1].to(torch.float64))
    out = list(xyz.unbind(1))
    for f in freqs:
        out += [torch.sin(f * lat), torch.cos(f * lat), torch.sin(f * lon), torch.cos(f * lon)]
    return torch.stack(out, dim=1)


@torch.no_grad()
def feature_prototypes(split, parent: torch.Tensor, depth: torch.Tensor, *,
                       block: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Each entity's mean feature over the training samples that carry it, in one streamed
    pass (``block`` rows at a time: ``[block, F]`` float64 in memory, never the split).

    Args:
        split: rows with ``ids [n, 4]`` and ``inputs(rows) -> [b, F]`` (a
            :class:`hiergeo.data.splits.Split`).
        parent: ``[N]`` each entity's parent id (-1 for the root).
        depth: ``[N]`` 0 for the root, 1 country ... 4 city.
    Returns:
        ``(prototypes [N, F] float32, counts [N] int64)``: ``counts`` the samples behind each
        entity's own mean (0 where it came from its children or its parent).

    Entities without samples take the count-free mean of their children's prototypes (deepest
    level first, so a chain of empty entities fills from below), then, where still empty,
    their parent's (top first); the root, and anything left, the mean of all samples.
    """
    n_ent = len(parent)
    ids = split.ids
    sums = counts = None
    total = None
    for start in range(0, len(ids), block):
        stop = min(start + block, len(ids))
        x = split.inputs(np.arange(start, stop)).to(torch.float64)
        if sums is None:
            sums = torch.zeros(n_ent, x.shape[1], dtype=torch.float64)
            counts = torch.zeros(n_ent, dtype=torch.int64)
            total = torch.zeros(x.shape[1], dtype=torch.float64)
        total += x.sum(0)
        rows = ids[start:stop]
        for j in range(rows.shape[1]):
            keep = rows[:, j] >= 0
            e = rows[keep, j]
            sums.index_add_(0, e, x[keep])
            counts.index_add_(0, e, torch.ones_like(e))
    if sums is None:
        raise ValueError("no training rows to compute entity prototypes from")
    proto = sums.div_(counts.clamp_min(1)[:, None])  # in place: one [N, F] float64 at most
    have = counts > 0
    parent, depth = parent.cpu(), depth.cpu()
    max_depth = int(depth.max())
    for d in range(max_depth, 0, -1):  # children -> empty parents, deepest first
        kids = torch.nonzero((depth == d) & have & (parent >= 0)).flatten()
        par, inv = torch.unique(parent[kids], return_inverse=True)
        empty = ~have[par]
        if not bool(empty.any()):
            continue
        keep = empty[inv]  # only the children of parents still empty
        sub = torch.cumsum(empty, 0) - 1  # row of each empty parent in csum
        csum = torch.zeros(int(empty.sum()), proto.shape[1], dtype=proto.dtype).index_add_(
            0, sub[inv[keep]], proto[kids[keep]])
        ccount = torch.bincount(sub[inv[keep]], minlength=len(csum))
        proto[par[empty]] = csum / ccount[:, None]
        have[par[empty]] = True
    mean = total / len(ids)
    root = ~have & (depth == 0)
    proto[root] = mean
    have = have | root
    for d in range(1, max_depth + 1):  # parents -> still-empty children, top first
        fill = ~have & (depth == d) & (parent >= 0)
        idx = torch.nonzero(fill).flatten()
        proto[idx] = proto[parent[idx]]
        have[idx] = have[parent[idx]]
    proto[~have] = mean
    return proto.to(torch.float32), counts


class DataEntities(nn.Module):
    """The learnt map from an entity's data to a tangent vector of the space.

    ``forward(idx [k]) -> [k, dim]`` float64 tangent vectors of entities ``idx``:
    ``MLP([LayerNorm(prototype), coordinates, level embedding]) (+ residual)``.

    Args:
        n: entities (rows, by entity id).
        in_dim: feature dimension of the prototypes.
        dim: dimension of the space.
        hidden: width of the map's hidden layer; 0: a linear map. The map runs on every
            distinct entity a step scores (with ``loss.scope=siblings`` on the names
            benchmark, tens of thousands a step): a hidden layer multiplies its cost.
        residual: a learnt per-entity tangent vector (``[n, dim]``, zero at the start) is
            added to the map's output.
        latlon, depth: ``[n, 2]`` entity coordinates (degrees) and ``[n]`` depths, for the
            fixed part of the input.
    """

    LEVEL_EMB = 8

    def __init__(self, n: int, in_dim: int, dim: int, *, hidden: int = 256,
                 residual: bool = True, latlon: torch.Tensor, depth: torch.Tensor):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(n, in_dim, dtype=torch.float32))
        self.register_buffer("coords", spherical_encoding(latlon).to(torch.float32))
        self.register_buffer("depth", depth.to(torch.int64).clone())
        self.norm = nn.LayerNorm(in_dim)
        self.level = nn.Embedding(int(depth.max()) + 1, self.LEVEL_EMB)
        d_in = in_dim + self.coords.shape[1] + self.LEVEL_EMB
        last = nn.Linear(hidden or d_in, dim)
        # tangent vectors of norm ~1 at the start: entities spread about as far from the
        # origin as the tree's (model.radius_budget), not all at the origin
        nn.init.normal_(last.weight, std=(0.5 if hidden else 1.0) / (hidden or d_in)**0.5)
        nn.init.zeros_(last.bias)
        self.net = (nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), last) if hidden
                    else last)
        self.residual = nn.Parameter(torch.zeros(n, dim)) if residual else None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.norm(self.prototypes[idx]), self.coords[idx],
                       self.level(self.depth[idx])], dim=1)
        v = self.net(x)
        if self.residual is not None:
            v = v + self.residual[idx]
        return v.to(torch.float64)

    @torch.no_grad()
    def set_prototypes_(self, proto: torch.Tensor) -> None:
        if proto.shape != self.prototypes.shape:
            raise ValueError(f"prototypes have shape {tuple(proto.shape)}, the model expects "
                             f"{tuple(self.prototypes.shape)}")
        self.prototypes.copy_(proto)
