"""Combinatorial embedding of a tree in the Poincaré ball (after Sarkar 2011, Sala et al. 2018).

Every edge has the same hyperbolic length ``r``. A node's children sit on the hyperbolic sphere
of radius ``r`` around it, in directions that

1. point away from the node's own parent: inside a cone of half-angle ``cone_deg`` around the
   outward axis, so that a child is never nearer the grandparent than its parent is, and the
   nephews of a node stay further from it than its own children;
2. follow geography: the first three coordinates of a direction come from where the child lies
   relative to its parent on Earth (its offset from the parent's centroid, mapped to a cap), so
   siblings that are close on Earth are close in the ball;
3. are separated: the other coordinates hold a random spread, then siblings closer than the
   angle that keeps every sibling further than ``r`` (plus a margin) are pushed apart.

Angles are preserved by the Möbius translation that carries the origin to the parent, which is
how a direction in the parent's frame becomes a point. The edge length fits the radius budget:
depth ``D`` nodes lie within ``D * r <= radius_budget`` of the origin, below float64's
projection limit (12.2 for c = 1), so nothing is clipped and nothing overflows. Everything runs
in NumPy float64 and is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..geometry import mobius_add

log = logging.getLogger(__name__)


def _mobius_add64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`hiergeo.geometry.mobius_add` (c = 1) on float64 NumPy arrays."""
    return mobius_add(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y))).numpy()


def sibling_angle(r: float) -> float:
    """Smallest angle (radians) between two children on a sphere of radius ``r`` for them to be
    further apart than ``r`` (so a node's nearest neighbours are its parent and children)."""
    ch = math.cosh(r)
    return math.acos(ch / (ch + 1))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-300)


# -- directions ---------------------------------------------------------------------------------
def _local_offsets(child_xyz: np.ndarray, parent_xyz: np.ndarray) -> np.ndarray:
    """Child positions in the east/north tangent plane at the parent centroid (radians-ish)."""
    z = np.array([0.0, 0.0, 1.0])
    east = np.cross(np.broadcast_to(z, parent_xyz.shape), parent_xyz)
    bad = np.linalg.norm(east, axis=-1) < 1e-12  # parent at a pole
    east[bad] = np.array([1.0, 0.0, 0.0])
    east = _unit(east)
    north = np.cross(parent_xyz, east)
    return np.stack([(child_xyz * east).sum(-1), (child_xyz * north).sum(-1)], axis=-1)


def initial_directions(group: np.ndarray, child_xyz: np.ndarray, parent_xyz: np.ndarray,
                       root_group: np.ndarray, dim: int, geo_cap: float, spread: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Directions (unit, ``[n, dim]``) in each parent's own frame, axis = coordinate 0.

    ``group`` holds each child's parent (sorted or not); ``root_group`` marks children of the
    root, whose directions are not confined to a cap.
    """
    n = len(group)
    if dim == 1:
        raise ValueError("dim must be >= 2")
    g = np.zeros((n, 3))
    off = _local_offsets(child_xyz, parent_xyz)
    radius = np.linalg.norm(off, axis=-1)
    # scale per sibling group by its largest offset
    order = np.argsort(group, kind="stable")
    gs = group[order]
    cuts = np.flatnonzero(np.diff(gs)) + 1
    scale = np.empty(n)
    for s, e in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        scale[order[s:e]] = max(radius[order[s:e]].max(), 1e-12)
    rho = radius / scale  # in [0, 1]
    phi = geo_cap * rho
    bearing = np.arctan2(off[:, 1], off[:, 0])
    g[:, 0] = np.cos(phi)
    g[:, 1] = np.sin(phi) * np.cos(bearing)
    g[:, 2] = np.sin(phi) * np.sin(bearing)
    g[root_group] = child_xyz[root_group]  # countries: where they are on the globe
    if dim == 2:
        # A circle cannot hold thousands of siblings far apart, so keep only their order
        # (countries by longitude, others by east-west offset) and space them evenly: the
        # widest separation a circle allows.
        key = np.where(root_group, np.arctan2(child_xyz[:, 1], child_xyz[:, 0]),
                       rho * np.cos(bearing))
        ang = np.empty(n)
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
            rows = order[s:e]
            rank = np.argsort(np.argsort(key[rows], kind="stable"), kind="stable")
            if root_group[rows[0]]:
                ang[rows] = -np.pi + 2 * np.pi * (rank + 0.5) / len(rows)
            else:
                ang[rows] = geo_cap * (2 * (rank + 0.5) / len(rows) - 1)
        return np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    geo_dims = min(dim, 3)
    u = np.zeros((n, dim))
    u[:, :geo_dims] = g[:, :geo_dims]
    u[:, :geo_dims] = _unit(u[:, :geo_dims])
    if dim > 3:
        # crowded groups need more of the random spread to be separable; small ones keep
        # their geography almost untouched
        size = np.bincount(group)[group]
        lam = spread * np.clip(np.log(size) / math.log(1000.0), 0.05, 1.0)[:, None]
        z = _unit(rng.standard_normal((n, dim - 3)))
        u[:, :3] *= np.sqrt(1 - lam)
        u[:, 3:] = np.sqrt(lam) * z
    return _unit(u)


def _clip_cone(u: np.ndarray, cos_cone: float, free: np.ndarray) -> np.ndarray:
    """Move directions outside the cone (axis = coordinate 0) onto its rim; ``free`` rows
    (children of the root) are left alone."""
    a = u[:, 0]
    bad = (a < cos_cone) & ~free
    if bad.any():
        rest = u[bad, 1:]
        rest = _unit(rest) * math.sqrt(1 - cos_cone**2)
        u[bad, 0] = cos_cone
        u[bad, 1:] = rest
    return u


_PAIR_CHUNK = 1 << 20


def _push(u: np.ndarray, i: np.ndarray, j: np.ndarray, chord: float, step: float,
          delta: np.ndarray, side: int) -> None:
    """Add to ``delta`` the push that moves each close pair ``(i, j)`` apart towards
    ``chord`` (along ``u_i - u_j``, or a deterministic pseudo-random axis where they
    coincide): to the i's (``side`` 0) or, negated, to the j's (1)."""
    d = u[i] - u[j]
    gap = np.linalg.norm(d, axis=-1, keepdims=True)
    tiny = gap[:, 0] < 1e-9
    if tiny.any():
        d[tiny] = np.sin(np.arange(u.shape[1])[None, :] * 1.7 + i[tiny, None])
        gap[tiny] = np.linalg.norm(d[tiny], axis=-1, keepdims=True)
    push = d / gap * (chord - gap) * step
    if side == 0:
        np.add.at(delta, i, push)
    else:
        np.add.at(delta, j, -push)


def separate(u: np.ndarray, group: np.ndarray, min_angle: float, cos_cone: float,
             free: np.ndarray, max_iter: int = 100, step: float = 0.6,
             patience: int = 10) -> tuple[np.ndarray, dict]:
    """Push apart siblings closer than ``min_angle``, keeping every direction in its cone.

    All groups at once: a k-d tree over the directions, with the group index as an extra,
    far-apart coordinate, only ever pairs siblings. After each round only the groups that
    still had a close pair are searched again. Stops when no pair is left, or when fewer than
    5% of the close pairs were resolved over the last ``patience`` rounds (the dimension is too
    small for the tree to be separated fully).
    """
    chord = 2 * math.sin(min_angle / 2)
    tag = group.astype(np.float64)[:, None] * 10.0
    active = np.arange(len(u))
    it, left, history = 0, 0, []
    for it in range(1, max_iter + 1):  # noqa: B007 - reported below
        sub = cKDTree(np.hstack([u[active], tag[active]]))
        pairs = sub.query_pairs(chord, output_type="ndarray")
        left = len(pairs)
        history.append(left)
        if left == 0:
            break
        # stalled: fewer than 5% of the close pairs resolved over the last `patience` rounds
        if len(history) > patience and left > 0.95 * history[-1 - patience]:
            break
        i, j = active[pairs[:, 0]], active[pairs[:, 1]]
        del pairs
        delta = np.zeros_like(u)
        # a chunk of pairs at a time: the full sibling separation finds tens of millions of
        # close pairs in the first rounds, and [pairs, dim] float64 temporaries for all of them
        # at once (pairs x dim x 8 bytes each) would set the embedding's peak memory
        # (see results/benchmarks/README.md#training-at-scale).
        # All the pushes to the i's, then all those to the j's, as one np.add.at each did:
        # the same additions in the same order, so the same result to the bit
        for side in (0, 1):
            for s in range(0, len(i), _PAIR_CHUNK):
                _push(u, i[s:s + _PAIR_CHUNK], j[s:s + _PAIR_CHUNK], chord, step, delta, side)
        moved = np.unique(np.r_[i, j])
        u[moved] = _clip_cone(_unit(u[moved] + delta[moved]), cos_cone, free[moved])
        active = np.flatnonzero(np.isin(group, np.unique(group[moved])))
    return u, {"iterations": it, "pairs_left": int(left)}


def _householder_to(u: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Reflect each row of ``u`` by the Householder map that takes e_0 to ``axis`` (row-wise)."""
    e0 = np.zeros_like(axis)
    e0[:, 0] = 1.0
    v = e0 - axis
    vv = (v * v).sum(-1, keepdims=True)
    ok = vv[:, 0] > 1e-24
    out = u.copy()
    proj = (u * v).sum(-1, keepdims=True)
    out[ok] = u[ok] - 2 * v[ok] * proj[ok] / vv[ok]
    return out


def construct(parent: np.ndarray, depth: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
              dim: int = 16, radius_budget: float = 11.5, cone_deg: float = 60.0,
              geo_cap_deg: float = 45.0, spread: float = 0.5, margin: float = 1.25,
              seed: int = 0) -> tuple[np.ndarray, dict]:
    """Points (c = 1, float64, ``[n, dim]``) for a tree given by ``parent`` (root: -1).

    Args:
        parent, depth: parent row and depth of each node; row 0 is the root.
        lat, lon: a geographic point per node (degrees), e.g. its centroid.
        dim: dimension of the ball (>= 2).
        radius_budget: largest distance from the origin of any node (c = 1 units); the edge
            length is ``radius_budget / max depth``.
        cone_deg: children's directions stay within this angle of the outward axis.
        geo_cap_deg: cap that geographic offsets are mapped onto.
        spread: share (0-1) of each direction's squared length given to the random spread in
            a group of 1000 or more siblings (less in smaller groups, as log(size)).
        margin: siblings are pushed apart to ``margin`` times the angle that just keeps them
            further apart than their parent.
    Returns:
        ``(points, info)`` with the edge length, target angle and separation statistics.
    """
    n = len(parent)
    max_depth = int(depth.max())
    r = radius_budget / max(max_depth, 1)
    min_angle = min(sibling_angle(r) * margin, math.radians(170))
    cos_cone = math.cos(math.radians(cone_deg))
    rng = np.random.default_rng(seed)
    la, lo = np.radians(lat), np.radians(lon)
    xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)

    kids = np.flatnonzero(parent >= 0)
    group = parent[kids]
    root_group = depth[group] == 0
    u = initial_directions(group, xyz[kids], xyz[group], root_group, dim,
                           math.radians(geo_cap_deg), spread, rng)
    u = _clip_cone(u, cos_cone, root_group)
    if dim > 2:
        u, sep = separate(u, group, min_angle, cos_cone, root_group)
    else:
        sep = {"iterations": 0, "pairs_left": None, "note": "2-D: siblings evenly spaced"}

    points = np.zeros((n, dim))
    tr = math.tanh(r / 2)  # Euclidean radius of a hyperbolic sphere of radius r at the origin
    direction = np.zeros((n, dim))
    direction[kids] = u
    for d in range(1, max_depth + 1):
        rows = np.flatnonzero(depth == d)
        par = parent[rows]
        x = points[par]
        if d == 1:
            local = tr * direction[rows]
        else:
            # in the frame where the parent sits at the origin, where is the grandparent?
            gp = points[parent[par]]
            to_gp = _unit(_mobius_add64(-x, gp))
            local = tr * _householder_to(direction[rows], -to_gp)
        points[rows] = _mobius_add64(x, local)
    info = {"edge_length": r, "min_sibling_angle_deg": math.degrees(min_angle),
            "cone_deg": cone_deg, "separation": sep}
    if dim > 2 and sep["pairs_left"]:
        log.warning("construction: %d sibling pairs still closer than %.1f deg after %d "
                    "iterations (dimension %d is tight for this tree)", sep["pairs_left"],
                    math.degrees(min_angle), sep["iterations"], dim)
    return points, info
