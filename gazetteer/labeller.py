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

import os

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .boundaries import COAST_KM, PolygonIndex
from .geo import to_xyz
from .keys import LEVELS

MODES = ("nearest-city", "osv5m", "polygon")

#: reverse_geocoder's default (multi-process) mode builds its trees with this leaf size.
RG_LEAFSIZE = 30


def _workers() -> int:
    return -1 if (os.cpu_count() or 1) > 1 else 1


class Labeller:
    """Nearest-place and polygon look-ups over a gazetteer's places and shapes.

    Trees are built lazily, on first use of the mode that needs them.
    """

    def __init__(self, entities: pd.DataFrame, places: pd.DataFrame, place_city: np.ndarray,
                 ancestors: np.ndarray, polygons: dict[int, object]):
        self.entities = entities
        self.place_lat = places["lat"].to_numpy(np.float64)
        self.place_lon = places["lon"].to_numpy(np.float64)
        # ids of the four levels for each place: [n_places, 4]
        self.place_path = ancestors[place_city]
        self.ancestors = ancestors
        self.polygons = polygons
        self._flat = None
        self._sphere = None
        self._poly = {}
        self._group_trees: dict[tuple[int, int], tuple[cKDTree, np.ndarray]] = {}

    # -- nearest-place trees --------------------------------------------------------------
    @property
    def flat_tree(self) -> cKDTree:
        if self._flat is None:
            self._flat = cKDTree(np.column_stack([self.place_lat, self.place_lon]),
                                 leafsize=RG_LEAFSIZE)
        return self._flat

    @property
    def sphere_tree(self) -> cKDTree:
        if self._sphere is None:
            self._sphere = cKDTree(to_xyz(self.place_lat, self.place_lon))
        return self._sphere

    def nearest_place(self, lat: np.ndarray, lon: np.ndarray, mode: str) -> np.ndarray:
        if len(lat) == 0:
            return np.zeros(0, dtype=np.int64)
        if mode == "osv5m":
            _, idx = self.flat_tree.query(np.column_stack([lat, lon]), k=1, workers=_workers())
        else:
            _, idx = self.sphere_tree.query(to_xyz(lat, lon), k=1, workers=_workers())
        return idx.astype(np.int64)

    # -- polygon mode -------------------------------------------------------------------------
    def _polygon_index(self, level: str) -> tuple[PolygonIndex, np.ndarray]:
        if level not in self._poly:
            depth = LEVELS.index(level) + 1
            ids = np.array(sorted(i for i in self.polygons
                                  if self.entities["depth"].iat[i] == depth), dtype=np.int64)
            geoms = [self.polygons[i] for i in ids]
            self._poly[level] = (PolygonIndex(geoms), ids)
        return self._poly[level]

    def _nearest_in_group(self, lat, lon, group: np.ndarray, level_col: int) -> np.ndarray:
        """Nearest place whose ancestor at ``level_col`` is ``group[i]`` (great circle)."""
        out = np.full(len(lat), -1, dtype=np.int64)
        xyz = to_xyz(lat, lon)
        order = np.argsort(group, kind="stable")
        g = group[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(g)], strict=True):
            if e <= s:
                continue
            gid = int(g[s])
            key = (level_col, gid)
            if key not in self._group_trees:
                members = np.flatnonzero(self.place_path[:, level_col] == gid)
                if len(members) == 0:
                    continue
                tree = cKDTree(to_xyz(self.place_lat[members], self.place_lon[members]))
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
        near = self.place_path[self.nearest_place(lat, lon, "nearest-city")]
        cindex, cids = self._polygon_index("country")
        hit = cindex.locate_or_nearest(lon, lat, coast_km)
        country = np.where(hit >= 0, cids[np.maximum(hit, 0)], near[:, 0])

        rindex, rids = self._polygon_index("region")
        rhit = rindex.locate_or_nearest(lon, lat, coast_km)
        region = np.where(rhit >= 0, rids[np.maximum(rhit, 0)], -1)
        # a region polygon of another country (borders of the two layers differ) does not count
        parent = self.entities["parent_id"].to_numpy()
        region = np.where((region >= 0) & (parent[np.maximum(region, 0)] == country), region, -1)
        need = np.flatnonzero(region < 0)
        if len(need):
            p = self._nearest_in_group(lat[need], lon[need], country[need], 0)
            region[need] = self.place_path[p, 1]
        place = self._nearest_in_group(lat, lon, region, 1)
        out = self.place_path[place].copy()
        out[:, 0], out[:, 1] = country, region
        return out

    def label_ids(self, lat, lon, mode: str, coast_km: float = COAST_KM) -> np.ndarray:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "polygon":
            return self.label_polygon(lat, lon, coast_km)
        return self.place_path[self.nearest_place(lat, lon, mode)]
