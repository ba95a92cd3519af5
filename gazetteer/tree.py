"""Places table -> entity tree (root, country, region, subregion, city).

Ids are dense integers: the root is 0, then countries, regions, subregions and cities, each
level sorted by key, so a rebuild from the same sources gives the same ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .countries import country_info
from .geo import from_xyz, to_xyz
from .keys import DEPTH, LEVELS, ROOT_KEY, make_keys

ENTITY_COLUMNS = [
    "id", "key", "level", "depth", "name", "parent_id", "placeholder",
    "country_code", "iso3", "country_name", "continent", "lat", "lon", "point_lat", "point_lon",
    "n_places",
    "min_lat", "min_lon", "max_lat", "max_lon", "has_polygon",
]


def build_entities(places: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Build the entity table from a places table.

    Returns ``(entities, place_city)`` where ``place_city[i]`` is the city entity id of place
    ``i``. Places sharing a full key (name, admin2, admin1, cc) are one city entity. ``lat,
    lon`` are centroids; ``point_lat, point_lon`` are the centroids too, until the caller
    chooses prediction points among its labelling points (:func:`prediction_points`, as
    :func:`gazetteer.build` does).
    """
    keys = make_keys(places["cc"], places["admin1"], places["admin2"], places["name"])
    own_part = {"country": places["cc"], "region": places["admin1"],
                "subregion": places["admin2"], "city": places["name"]}
    xyz = to_xyz(places["lat"].to_numpy(), places["lon"].to_numpy())

    frames = [_root_frame(xyz, places)]
    next_id = 1
    place_ids: dict[str, np.ndarray] = {}
    for level in LEVELS:
        codes, uniques = pd.factorize(keys[level], sort=True)
        ids = codes + next_id
        place_ids[level] = ids
        first = _first_index(codes, len(uniques))
        n = np.bincount(codes, minlength=len(uniques))
        frame = pd.DataFrame({
            "id": np.arange(len(uniques)) + next_id,
            "key": np.asarray(uniques, dtype=object),
            "level": level,
            "depth": DEPTH[level],
            "name": own_part[level].to_numpy(dtype=object)[first],
            "country_code": places["cc"].to_numpy(dtype=object)[first],
            "n_places": n,
        })
        frame["placeholder"] = frame["name"] == ""
        if level == "country":
            frame["parent_id"] = 0
        else:
            parent_level = LEVELS[LEVELS.index(level) - 1]
            frame["parent_id"] = place_ids[parent_level][first]
        frame = frame.join(_centroids(codes, len(uniques), xyz, places))
        frames.append(frame)
        next_id += len(uniques)

    ent = pd.concat(frames, ignore_index=True)
    info = country_info(ent["country_code"].where(ent["depth"] > 0, ""))
    ent["iso3"] = info["iso3"].to_numpy()
    ent["country_name"] = info["name"].to_numpy()
    ent["continent"] = info["continent"].to_numpy()
    is_country = ent["level"] == "country"
    ent.loc[is_country, "name"] = ent.loc[is_country, "country_name"].fillna(
        ent.loc[is_country, "key"])
    ent["has_polygon"] = False
    ent = _tidy_types(ent)
    place_city = place_ids["city"].astype(np.int64)
    # centroids until the caller picks prediction points among its labelling points
    # (:func:`prediction_points`; gazetteer.core.build does, once)
    ent["point_lat"], ent["point_lon"] = ent["lat"], ent["lon"]
    return ent[ENTITY_COLUMNS], place_city


def prediction_points(entities: pd.DataFrame, ancestors: np.ndarray, lat: np.ndarray,
                      lon: np.ndarray, point_city: np.ndarray) -> np.ndarray:
    """``[n_entities, 2]`` prediction point of each entity: of the labelling points inside it
    (``point_city[i]`` is the city of point ``i``), the one nearest its centroid.

    A city that merges several GeoNames places (same key, often tens of km apart) has a
    centroid that reverse-geocodes to one of its places' neighbours, not to itself; a point of
    its own labels back to it (unless another place shares that point's exact coordinates).
    The same rule at every level keeps a region's or country's point inside it too. Ties go
    to the lowest row; an entity without points keeps its centroid.
    """
    out = entities[["lat", "lon"]].to_numpy(np.float64).copy()
    if len(point_city) == 0:
        return out
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    centroid = to_xyz(out[:, 0], out[:, 1])
    pxyz = to_xyz(lat, lon)
    rows = np.arange(len(point_city))
    owners = [np.zeros(len(point_city), np.int64)]  # the root
    owners += [ancestors[point_city, j] for j in range(len(LEVELS))]
    for owner in owners:
        cos = (pxyz * centroid[owner]).sum(1)
        order = np.lexsort((rows, -cos, owner))  # by owner, nearest first, then lowest row
        first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        out[owner[first], 0], out[owner[first], 1] = lat[first], lon[first]
    return out


def _root_frame(xyz: np.ndarray, places: pd.DataFrame) -> pd.DataFrame:
    codes = np.zeros(len(places), dtype=np.int64)
    frame = pd.DataFrame({"id": [0], "key": [ROOT_KEY], "level": ["root"], "depth": [0],
                          "name": ["World"], "country_code": [None], "n_places": [len(places)],
                          "placeholder": [False], "parent_id": [-1]})
    return frame.join(_centroids(codes, 1, xyz, places))


def _first_index(codes: np.ndarray, n: int) -> np.ndarray:
    first = np.full(n, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first


def _centroids(codes: np.ndarray, n: int, xyz: np.ndarray, places: pd.DataFrame) -> pd.DataFrame:
    """Normalised mean of member unit vectors (right across the antimeridian), the place itself
    for single-place entities, and a bounding box that may cross the antimeridian
    (``min_lon > max_lon`` then)."""
    sums = np.zeros((n, 3))
    np.add.at(sums, codes, xyz)
    lat, lon = from_xyz(sums)
    count = np.bincount(codes, minlength=n)
    plat, plon = places["lat"].to_numpy(), places["lon"].to_numpy()
    single = count == 1
    first = _first_index(codes, n)
    lat[single], lon[single] = plat[first[single]], plon[first[single]]

    g = pd.DataFrame({"c": codes, "lat": plat, "lon": plon,
                      "lon360": np.where(plon < 0, plon + 360.0, plon)}).groupby("c")
    agg = g.agg(min_lat=("lat", "min"), max_lat=("lat", "max"), min_lon=("lon", "min"),
                max_lon=("lon", "max"), min_360=("lon360", "min"), max_360=("lon360", "max"))
    # Use the 0..360 frame where it gives the narrower box: that box crosses the antimeridian.
    wrap = (agg["max_360"] - agg["min_360"]) < (agg["max_lon"] - agg["min_lon"])
    min_lon = np.where(wrap, _to180(agg["min_360"]), agg["min_lon"])
    max_lon = np.where(wrap, _to180(agg["max_360"]), agg["max_lon"])
    return pd.DataFrame({"lat": lat, "lon": lon, "min_lat": agg["min_lat"].to_numpy(),
                         "min_lon": min_lon, "max_lat": agg["max_lat"].to_numpy(),
                         "max_lon": max_lon})


def _to180(lon360):
    lon360 = np.asarray(lon360)
    return np.where(lon360 > 180.0, lon360 - 360.0, lon360)


def _tidy_types(ent: pd.DataFrame) -> pd.DataFrame:
    for col in ("id", "depth", "parent_id", "n_places"):
        ent[col] = ent[col].astype(np.int64)
    for col in ("key", "level", "name", "country_code", "iso3", "country_name", "continent"):
        ent[col] = ent[col].astype("string")
    ent["placeholder"] = ent["placeholder"].astype(bool)
    return ent


def ancestors_table(entities: pd.DataFrame) -> np.ndarray:
    """``[n_entities, 4]`` array: the country, region, subregion and city id above (or equal
    to) each entity, -1 where the entity is above that level."""
    parent = entities["parent_id"].to_numpy()
    depth = entities["depth"].to_numpy()
    out = np.full((len(entities), len(LEVELS)), -1, dtype=np.int64)
    cur = np.arange(len(entities))
    for d in range(len(LEVELS), 0, -1):
        at = depth >= d
        # walk each entity up to depth d
        node = cur.copy()
        steps = depth - d
        for _ in range(int(steps.max(initial=0))):
            move = steps > 0
            node[move] = parent[node[move]]
            steps = steps - move
        out[at, d - 1] = node[at]
    return out


def children_csr(parent: np.ndarray, keep: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Children of every node as CSR lists: those of node i are
    ``order[start[i]:start[i + 1]]``, in id order; ``parent [n]`` (-1 for the root),
    ``keep`` (bool ``[n]``, default all) the nodes that count as children. The one home of
    this structure: the model's hierarchy (:mod:`hiergeo.model.hierarchy`) and the
    embedding's evaluation both read it."""
    parent = np.asarray(parent, np.int64)
    ok = parent >= 0 if keep is None else (parent >= 0) & np.asarray(keep, bool)
    kids = np.flatnonzero(ok)
    order = kids[np.argsort(parent[kids], kind="stable")]
    start = np.concatenate([[0], np.cumsum(np.bincount(parent[kids], minlength=len(parent)))])
    return order, start.astype(np.int64)
