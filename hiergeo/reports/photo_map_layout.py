"""Where the photo map draws things, worked out before the page is written (so it can be
tested without a browser): truth lines the short way round, and photos stacked on one spot."""

from __future__ import annotations


def link_segments(lat: float, lon: float, tlat: float, tlon: float) -> list[list[float]]:
    """The prediction-to-truth line as ``[[lon0, lat0, lon1, lat1], ...]``, the shorter way
    round: a line that crosses the antimeridian is split there (latitude interpolated), so
    every drawn longitude stays within [-180, 180] and no line leaves the map."""
    d = tlon - lon
    if abs(d) <= 180:
        return [[lon, lat, tlon, tlat]]
    edge = 180.0 if d < 0 else -180.0          # the side of the map the prediction leaves by
    span = 360 - abs(d)                          # the short way, in degrees of longitude
    f = (180 - abs(lon)) / span if span else 0.5
    mid = round(lat + f * (tlat - lat), 5)
    return [[lon, lat, edge, mid], [-edge, mid, tlon, tlat]]


#: Predictions closer than this (degrees, about 10 m) share one marker with a count: even at the
#: closest zoom they would hide one another. Hierarchical predictions often land on exactly the
#: same point (an entity's centre).
STACK_DEG = 1e-4
#: Confident levels, coarsest first ("" = not even the country).
_LEVEL_ORDER = ("", "country", "region", "subregion", "city")


def stacks(rows: list[dict]) -> list[dict]:
    """Groups of two or more rows at one predicted spot, in order of first appearance:
    ``{"rows": [indices], "lat", "lon" (the first row's), "lvl" (the members' most common
    level, the finer on a tie)}``. Every other row is drawn on its own."""
    spots: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(rows):
        spots.setdefault((round(r["lat"] / STACK_DEG), round(r["lon"] / STACK_DEG)), []).append(i)
    out = []
    for members in spots.values():
        if len(members) < 2:
            continue
        levels = [rows[i]["lvl"] for i in members]
        lvl = max(set(levels), key=lambda lv: (levels.count(lv), _LEVEL_ORDER.index(lv)))
        first = rows[members[0]]
        out.append({"rows": members, "lat": first["lat"], "lon": first["lon"], "lvl": lvl})
    return out
