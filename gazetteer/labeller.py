"""Labelling points with entities: ``osv5m``, ``nearest-city`` and ``polygon`` modes.

- ``osv5m``: what ``reverse_geocoder`` (and so OSV-5M's labels and metric code) does: a k-d tree
  on raw (latitude, longitude) degrees, as if the Earth were flat. Same points, same parsing,
  same tree type and leaf size as its default mode, so the same nearest place, ties included.
- ``nearest-city``: the nearest place by great-circle distance (k-d tree on unit vectors; the
  chord is monotonic in the arc), then its ancestors.
- ``polygon``: country and region by point-in-polygon with a nearest-polygon fallback near
  coasts; subregion and city from the nearest place inside the chosen region.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from pykdtree.kdtree import KDTree
from scipy.spatial import cKDTree

from .boundaries import COAST_KM, PolygonIndex
from .geo import to_xyz
from .keys import LEVELS

MODES = ("nearest-city", "osv5m", "polygon")

#: reverse_geocoder's default (multi-process) mode builds its trees with this leaf size; its
#: choice among places with identical coordinates depends on the tree, so we ask such a tree.
RG_LEAFSIZE = 30


def spatial_order(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A permutation that groups nearby points (0.5-degree cells): k-d tree queries in this
    order touch the same nodes one after another, so those nodes stay in the CPU's caches
    (labelling speed: results/benchmarks/README.md#gazetteer)."""
    cell = np.floor((lat + 90.0) * 2).astype(np.int32) * 721 + np.floor((lon + 180.0) * 2).astype(
        np.int32)
    return np.argsort(cell)


class PointIndex:
    """Exact nearest neighbour among places, by pykdtree over unique coordinates.

    Places sharing coordinates are one tree point; which of them is answered is decided once:
    the lowest row (``ties="first"``) or the one ``reverse_geocoder``'s own tree returns
    (``ties="rg"``), so the ``osv5m`` mode agrees with it on ties too.
    """

    def __init__(self, coords: np.ndarray, ties: str = "first"):
        uniq, first, inverse = np.unique(coords, axis=0, return_index=True, return_inverse=True)
        self.points = np.ascontiguousarray(uniq, dtype=np.float64)
        self.rep = first.astype(np.int64)
        counts = np.bincount(inverse.reshape(-1), minlength=len(uniq))
        dup = np.flatnonzero(counts > 1)
        if ties == "rg" and len(dup):
            rg_tree = cKDTree(coords, leafsize=RG_LEAFSIZE)
            _, self.rep[dup] = rg_tree.query(self.points[dup], k=1)
        self.tree = KDTree(self.points, leafsize=16)

    def query(self, q: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest place row and distance for each query row; ``order`` from
        :func:`spatial_order`."""
        out = np.empty(len(q), dtype=np.int64)
        dist = np.empty(len(q), dtype=np.float64)
        if len(q):
            d, j = self.tree.query(np.ascontiguousarray(q[order]), k=1)
            out[order] = self.rep[j.astype(np.int64)]
            dist[order] = d
        return out, dist


class Labeller:
    """Nearest-place and polygon look-ups over a gazetteer's places and shapes.

    Indexes are built lazily, on first use of the mode that needs them.
    """

    def __init__(self, entities: pd.DataFrame, places: pd.DataFrame, place_city: np.ndarray,
                 ancestors: np.ndarray, polygons: dict[int, object]):
        self.entities = entities
        self.place_lat = places["lat"].to_numpy(np.float64)
        self.place_lon = places["lon"].to_numpy(np.float64)
        # ids of the four levels for each place: [n_places, 4]
        self.place_path = ancestors[place_city].astype(np.int32)
        self.polygons = polygons
        self._flat = None
        self._sphere = None
        self._poly = {}
        self.place_xyz = to_xyz(self.place_lat, self.place_lon)
        self._group_trees: dict[tuple[int, int], tuple[cKDTree, np.ndarray]] = {}
        self._members: dict[int, tuple[np.ndarray, dict]] = {}

    # -- nearest-place indexes ----------------------------------------------------------------
    @property
    def flat_index(self) -> PointIndex:
        if self._flat is None:
            self._flat = PointIndex(np.column_stack([self.place_lat, self.place_lon]), ties="rg")
        return self._flat

    @property
    def sphere_index(self) -> PointIndex:
        if self._sphere is None:
            self._sphere = PointIndex(self.place_xyz)
        return self._sphere

    def nearest_place(self, lat: np.ndarray, lon: np.ndarray, mode: str) -> np.ndarray:
        order = spatial_order(lat, lon)
        if mode == "osv5m":
            return self.flat_index.query(np.column_stack([lat, lon]), order)[0]
        return self.sphere_index.query(to_xyz(lat, lon), order)[0]

    # -- polygon mode -------------------------------------------------------------------------
    def _polygon_index(self, level: str) -> tuple[PolygonIndex, np.ndarray]:
        if level not in self._poly:
            depth = LEVELS.index(level) + 1
            ids = np.array(sorted(i for i in self.polygons
                                  if self.entities["depth"].iat[i] == depth), dtype=np.int64)
            geoms = [self.polygons[i] for i in ids]
            self._poly[level] = (PolygonIndex(geoms), ids)
        return self._poly[level]

    def _nearest_in_group(self, xyz: np.ndarray, group: np.ndarray, level_col: int) -> np.ndarray:
        """Nearest place (great circle) whose ancestor at ``level_col`` is ``group[i]``; one
        small k-d tree per group, built on first use and kept."""
        if level_col not in self._members:
            by = np.argsort(self.place_path[:, level_col], kind="stable")
            ids = self.place_path[by, level_col]
            cuts = np.flatnonzero(np.diff(ids)) + 1
            starts, ends = np.r_[0, cuts], np.r_[cuts, len(ids)]
            self._members[level_col] = (by, dict(zip(ids[starts].tolist(),
                                                      zip(starts.tolist(), ends.tolist(),
                                                          strict=True), strict=True)))
        by, spans = self._members[level_col]
        out = np.full(len(xyz), -1, dtype=np.int64)
        order = np.argsort(group, kind="stable")
        g = group[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(g)], strict=True):
            gid = int(g[s])
            key = (level_col, gid)
            if key not in self._group_trees:
                if gid not in spans:
                    continue
                a, b = spans[gid]
                members = by[a:b]
                tree = cKDTree(self.place_xyz[members])
                self._group_trees[key] = (tree, members)
            tree, members = self._group_trees[key]
            rows = order[s:e]
            _, j = tree.query(xyz[rows], k=1)
            out[rows] = members[j]
        return out

    def label_polygon(self, lat, lon, coast_km: float = COAST_KM) -> np.ndarray:
        """``[n, 4]`` entity ids by polygons; see the module docstring."""
        n = len(lat)
        if n == 0:
            return np.zeros((0, 4), dtype=np.int64)
        pts = shapely.points(lon, lat)
        xyz = to_xyz(lat, lon)
        cindex, cids = self._polygon_index("country")
        hit = cindex.locate_or_nearest(lon, lat, coast_km, pts=pts)
        country = cids[np.maximum(hit, 0)]
        far = np.flatnonzero(hit < 0)  # at sea, beyond coast_km: the nearest place's country
        if len(far):
            near = self.nearest_place(lat[far], lon[far], "nearest-city")
            country[far] = self.place_path[near, 0]

        rindex, rids = self._polygon_index("region")
        rhit = rindex.locate_or_nearest(lon, lat, coast_km, pts=pts)
        region = np.where(rhit >= 0, rids[np.maximum(rhit, 0)], -1)
        # a region polygon of another country (borders of the two layers differ) does not count
        parent = self.entities["parent_id"].to_numpy()
        region = np.where((region >= 0) & (parent[np.maximum(region, 0)] == country), region, -1)
        need = np.flatnonzero(region < 0)
        if len(need):
            p = self._nearest_in_group(xyz[need], country[need], 0)
            region[need] = self.place_path[p, 1]
        place = self._nearest_in_group(xyz, region, 1)
        out = self.place_path[place].astype(np.int64)
        out[:, 0], out[:, 1] = country, region
        return out

    def label_ids(self, lat, lon, mode: str, coast_km: float = COAST_KM) -> np.ndarray:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "polygon":
            return self.label_polygon(lat, lon, coast_km)
        return self.place_path[self.nearest_place(lat, lon, mode)]
