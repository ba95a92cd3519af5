"""Predict within a region the user already knows: a country, several, a region, a polygon.

A flat classifier cannot be told "the photo is in France or Germany" without retraining; a
hierarchy can: descend a :class:`~hiergeo.model.hierarchy.Hierarchy` in which only the
allowed subtrees are active (:meth:`Hierarchy.restricted
<hiergeo.model.hierarchy.Hierarchy.restricted>`). Every level's probability is a softmax over
a parent's *active* children, so the probabilities are renormalised over what is allowed by
construction, and the retrieval memory's neighbours outside the region drop out alike: its
vote counts only neighbours whose entity is active
(:func:`~hiergeo.predict.memory.memory_conditional`).

``within`` is one of

- codes, as a list or one comma-separated string: ISO 3166 alpha-2 country codes (``FR``;
  case does not matter), country names (``France``), or any OSV-5M entity key, e.g. a region
  key ``Bavaria_DE`` (``admin1_cc``): the entity and everything under it are allowed;
- a polygon file (GeoJSON: a geometry, a Feature or a FeatureCollection, lon/lat degrees),
  or a shapely geometry: an entity is allowed when its prediction point lies inside, so every
  predicted point with ``coords="city"`` lies inside too (``"weighted"`` averages the top-k
  points, and the mean of points inside a concave polygon may fall outside it).

Unknown codes are refused (:class:`RegionError`) with the nearest known ones named.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS

POLYGON_SUFFIXES = (".geojson", ".json")


class RegionError(ValueError):
    """A ``within`` that names nothing the model knows; the message says what to use."""


def parse_within(within) -> list[str] | object:
    """``within`` as given by a user: a list of codes, or a polygon (a shapely geometry, or a
    :class:`~pathlib.Path` / string naming a ``.geojson`` file, read here)."""
    if hasattr(within, "geom_type"):
        return within
    if isinstance(within, Path) or (isinstance(within, str)
                                    and within.strip().lower().endswith(POLYGON_SUFFIXES)):
        return read_polygon(Path(within))
    if isinstance(within, str):
        within = within.split(",")
    codes = [str(c).strip() for c in within if str(c).strip()]
    if not codes:
        raise RegionError("within names no region: give ISO codes such as FR,DE, region keys "
                          "such as Bavaria_DE, or a .geojson polygon file")
    return codes


def read_polygon(path: Path):
    """The union of the geometries of a GeoJSON file (lon/lat degrees)."""
    import shapely
    from shapely.errors import ShapelyError
    from shapely.geometry import shape

    if not path.is_file():
        raise RegionError(f"{path}: no such polygon file; give an existing .geojson file or "
                          "country codes such as FR,DE")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in doc["features"] if f.get("geometry")]
        elif doc.get("type") == "Feature":
            geoms = [shape(doc["geometry"])]
        else:
            geoms = [shape(doc)]
    except (ValueError, KeyError, TypeError, AttributeError, OSError, ShapelyError) as exc:
        raise RegionError(f"{path}: not a GeoJSON geometry, Feature or FeatureCollection "
                          f"({exc})") from exc
    geoms = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not geoms:
        raise RegionError(f"{path}: no polygon in it (points and lines enclose nothing)")
    try:  # a self-crossing ring or overlapping polygons: repaired, not a GEOS traceback
        return shapely.union_all([shapely.make_valid(g) for g in geoms])
    except ShapelyError as exc:
        raise RegionError(f"{path}: its polygons cannot be combined ({exc})") from exc


def _lookup(entities: pd.DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """``(exact, folded)``: entity id by key (any level), and by upper-cased country key or
    case-folded country name."""
    keys = entities["key"].astype(str).to_numpy(object)
    level = entities["level"].astype(str).to_numpy(object)
    exact = {k: i for i, k in enumerate(keys) if level[i] in LEVELS}
    folded = {}
    for i in np.flatnonzero(level == "country"):
        folded[str(keys[i]).upper()] = int(i)
        name = entities["name"].iloc[i]
        if isinstance(name, str) and name:
            folded.setdefault(name.casefold(), int(i))
    return exact, folded


def resolve_codes(codes: list[str], entities: pd.DataFrame) -> list[int]:
    """Entity ids of ``codes``; unknown ones raise :class:`RegionError` naming, for each, the
    nearest known country codes, names and region keys."""
    exact, folded = _lookup(entities)
    ids, unknown = [], []
    for c in codes:
        i = exact.get(c, folded.get(c.upper(), folded.get(c.casefold())))
        (unknown if i is None else ids).append(c if i is None else i)
    if unknown:
        level = entities["level"].astype(str).to_numpy(object)
        names = entities["name"].where(entities["level"] == "country").dropna()
        known = sorted({k for k, i in exact.items() if level[i] in ("country", "region")}
                       | {str(n) for n in names if str(n)})
        by_fold = {k.casefold(): k for k in known}
        parts = []
        for c in unknown:
            near = difflib.get_close_matches(c.casefold(), list(by_fold), n=4, cutoff=0.6)
            near = [by_fold[k] for k in near]
            parts.append(f"{c!r} (nearest: {', '.join(near)})" if near else f"{c!r}")
        raise RegionError(f"unknown region code{'s' if len(unknown) > 1 else ''} "
                          f"{'; '.join(parts)}: use ISO alpha-2 country codes (FR), country "
                          "names (France), OSV-5M region keys (Bavaria_DE) or a .geojson file")
    return ids


def allowed_entities(within, entities: pd.DataFrame, ancestors: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: the entities ``within`` allows (see the module docstring).
    ``ancestors [N, 4]``: each entity's ancestor per level (``Hierarchy.ancestors``)."""
    spec = parse_within(within)
    ancestors = np.asarray(ancestors)
    if not isinstance(spec, list):
        import shapely

        lat = entities["point_lat"].to_numpy(np.float64)
        lon = entities["point_lon"].to_numpy(np.float64)
        inside = shapely.contains_xy(spec, lon, lat)
        return inside & (entities["depth"].to_numpy() > 0)
    ids = np.asarray(resolve_codes(spec, entities), np.int64)
    depth = entities["depth"].to_numpy(np.int64)[ids]
    allowed = np.zeros(len(entities), bool)
    for d in range(1, len(LEVELS) + 1):
        if (depth == d).any():
            allowed |= np.isin(ancestors[:, d - 1], ids[depth == d])
    return allowed


def restrict(hier, entities: pd.DataFrame, within):
    """``hier`` restricted to ``within`` (a :class:`~hiergeo.model.hierarchy.Hierarchy` on
    the same device); :class:`RegionError` when the model knows no entity there."""
    allowed = allowed_entities(within, entities, hier.ancestors.cpu().numpy())
    try:
        return hier.restricted(allowed)
    except ValueError as exc:
        what = "polygon" if not isinstance(parse_within(within), list) else "region"
        raise RegionError(f"the {what} holds no entity this model predicts ({exc}); "
                          "widen it, or check the codes") from exc
