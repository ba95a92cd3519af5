"""Boundary polygons for countries and regions.

Polygons are given to entities by a spatial join of the *places*, not by matching codes or
names: each admin-0 (admin-1) polygon goes to the country (region) that has most places inside
it, and an entity's shape is the union of the polygons it won. This copes with Natural Earth's
uneven admin-1 level (France's 101 départements become GeoNames' 13 regions) and with any other
boundary file geopandas reads, which only has to name a country-code column (used for polygons
with no place inside) and a name column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from .errors import InputError
from .geo import EARTH_RADIUS_KM, to_xyz

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"

#: How far (km) a place or a point may lie outside every polygon and still be given the nearest
#: one. Natural Earth's coastlines leave some coastal places just outside their polygon, and the
#: bundled polygons are simplified to about 1 km (``scripts/derive_natural_earth.py``); how many
#: places fall outside every polygon is ``coverage`` in ``results/benchmarks/gazetteer.json``.
COAST_KM = 25.0
#: Longest boundary edge (degrees) kept when measuring distance to a polygon by its vertices.
EDGE_STEP_DEG = 0.05


@dataclass(frozen=True)
class BoundarySource:
    """Where admin-0/admin-1 polygons come from, and the small column mapping they need.

    ``path=None`` means the Natural Earth polygons shipped in ``gazetteer/data`` (derived by
    ``scripts/derive_natural_earth.py``).
    """

    path: Path | None = None
    admin0_layer: str | None = "countries"
    admin1_layer: str | None = "states_provinces"
    code_field: str = "iso_a2"
    name_field: str = "name"

    def read(self, level: int) -> gpd.GeoDataFrame:
        """Polygons of admin level 0 or 1 as ``code, name, geometry`` in EPSG:4326."""
        if self.path is None:
            gdf = gpd.read_parquet(DATA_DIR / f"admin{level}.parquet")
        else:
            layer = self.admin0_layer if level == 0 else self.admin1_layer
            if layer is None:
                return gpd.GeoDataFrame({"code": [], "name": []}, geometry=[], crs="EPSG:4326")
            gdf = gpd.read_file(self.path, layer=layer)
            missing = [c for c in (self.code_field, self.name_field) if c not in gdf.columns]
            if missing:
                raise InputError(f"{self.path} layer {layer!r}: no column(s) {missing}; "
                                 f"columns are {list(gdf.columns)}")
            gdf = gpd.GeoDataFrame(
                {"code": gdf[self.code_field].astype(str),
                 "name": gdf[self.name_field].astype(str)},
                geometry=gdf.geometry, crs=gdf.crs)
        if gdf.crs is not None and not gdf.crs.equals("EPSG:4326"):
            gdf = gdf.to_crs("EPSG:4326")
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].reset_index(drop=True)
        return gdf

    def describe(self) -> dict:
        if self.path is None:
            return {"kind": "bundled Natural Earth", "files": ["admin0.parquet", "admin1.parquet"]}
        return {"kind": "file", "path": str(self.path), "admin0_layer": self.admin0_layer,
                "admin1_layer": self.admin1_layer, "code_field": self.code_field,
                "name_field": self.name_field}


class PolygonIndex:
    """Fast point-in-polygon over many polygons: an STR-tree on bounding boxes, then prepared
    ``contains_xy`` per polygon over its candidate points."""

    def __init__(self, geoms):
        self.geoms = np.asarray(geoms, dtype=object)
        shapely.prepare(self.geoms)
        self.tree = shapely.STRtree(self.geoms)
        self._edges = None

    def __len__(self) -> int:
        return len(self.geoms)

    def locate(self, lon: np.ndarray, lat: np.ndarray, pts=None) -> np.ndarray:
        """Index of a polygon containing each point (the lowest index if several), else -1."""
        out = np.full(len(lon), -1, dtype=np.int64)
        if len(lon) == 0 or len(self.geoms) == 0:
            return out
        pt, poly = self.tree.query(shapely.points(lon, lat) if pts is None else pts)
        if len(pt) == 0:
            return out
        order = np.lexsort((pt, poly))
        pt, poly = pt[order], poly[order]
        cuts = np.flatnonzero(np.diff(poly)) + 1
        hit = np.zeros(len(pt), dtype=bool)
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(pt)], strict=True):
            hit[s:e] = shapely.contains_xy(self.geoms[poly[s]], lon[pt[s:e]], lat[pt[s:e]])
        pt, poly = pt[hit], poly[hit]
        # lowest polygon index wins where polygons overlap
        order = np.lexsort((poly, pt))
        pt, poly = pt[order], poly[order]
        first = np.r_[True, pt[1:] != pt[:-1]]
        out[pt[first]] = poly[first]
        return out

    def nearest(self, lon: np.ndarray, lat: np.ndarray, max_km: float) -> np.ndarray:
        """Index of the polygon whose boundary is nearest, if within ``max_km`` (great circle),
        else -1.

        Distances go to boundary vertices after segmentizing edges to at most
        ``EDGE_STEP_DEG``, so they overstate the true distance by at most ~3 km; in exchange a
        k-d tree answers in microseconds where exact polygon distances take milliseconds.
        """
        out = np.full(len(lon), -1, dtype=np.int64)
        if len(lon) == 0 or len(self.geoms) == 0 or max_km <= 0:
            return out
        if self._edges is None:
            dense = shapely.segmentize(self.geoms, EDGE_STEP_DEG)
            xy, owner = shapely.get_coordinates(dense, return_index=True)
            self._edges = (cKDTree(to_xyz(xy[:, 1], xy[:, 0])), owner)
        tree, owner = self._edges
        chord = 2 * np.sin(max_km / EARTH_RADIUS_KM / 2)
        d, j = tree.query(to_xyz(lat, lon), k=1, distance_upper_bound=chord)
        found = np.isfinite(d)
        out[found] = owner[j[found]]
        return out

    def locate_or_nearest(self, lon, lat, max_km: float = COAST_KM, pts=None) -> np.ndarray:
        """:meth:`locate`, then :meth:`nearest` for the points outside every polygon;
        ``pts`` are the points as shapely geometries, if the caller has them already."""
        idx = self.locate(lon, lat, pts)
        miss = np.flatnonzero(idx < 0)
        if len(miss):
            idx[miss] = self.nearest(lon[miss], lat[miss], max_km)
        return idx


def assign_polygons(
    places: pd.DataFrame,
    place_entity: np.ndarray,
    polygons: gpd.GeoDataFrame,
    code_to_entity: dict[str, int] | None = None,
) -> tuple[dict[int, object], dict]:
    """Give each polygon to the entity with most places inside it; union per entity.

    ``place_entity[i]`` is the entity (of the level being assigned) of place ``i``.
    ``code_to_entity`` maps the polygon's code column to an entity for polygons that hold no
    place. Returns ``({entity_id: geometry}, stats)``.
    """
    # Vote per polygon *part*: France's multipolygon in admin-0 also holds Guadeloupe, Réunion...
    # which GeoNames files as countries of their own. A part with no place inherits the winner
    # of its whole polygon, and a polygon with no place at all falls back to its code.
    geoms, part_of = shapely.get_parts(polygons.geometry.values, return_index=True)
    index = PolygonIndex(geoms)
    lon, lat = places["lon"].to_numpy(), places["lat"].to_numpy()
    part_of_place = index.locate_or_nearest(lon, lat)
    inside = part_of_place >= 0
    part_winner = _majority(part_of_place[inside], place_entity[inside], len(geoms))
    poly_winner = _majority(part_of[part_of_place[inside]], place_entity[inside], len(polygons))
    by_code = 0
    if code_to_entity:
        for i in np.flatnonzero(poly_winner < 0):
            ent = code_to_entity.get(polygons["code"].iat[i])
            if ent is not None:
                poly_winner[i], by_code = ent, by_code + 1
    owner = np.where(part_winner >= 0, part_winner, poly_winner[part_of])
    shapes = {}
    for ent, idx in pd.Series(np.arange(len(owner))[owner >= 0]).groupby(owner[owner >= 0]):
        parts = geoms[idx.to_numpy()]
        shapes[int(ent)] = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    stats = {
        "polygons": len(polygons),
        "parts": len(geoms),
        "parts_assigned_by_places": int((part_winner >= 0).sum()),
        "polygons_assigned_by_code": by_code,
        "parts_unassigned": int((owner < 0).sum()),
        "places_outside_all_polygons": int((~inside).sum()),
    }
    return shapes, stats


def _majority(group: np.ndarray, entity: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the entity with most members (ties: smaller id); -1 for empty groups."""
    out = np.full(n_groups, -1, dtype=np.int64)
    if len(group) == 0:
        return out
    counts = pd.DataFrame({"g": group, "e": entity}).value_counts().reset_index(name="n")
    counts = counts.sort_values(["g", "n", "e"], ascending=[True, False, True])
    best = counts.drop_duplicates("g")
    out[best["g"].to_numpy()] = best["e"].to_numpy()
    return out
