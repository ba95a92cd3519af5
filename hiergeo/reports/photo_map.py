"""One self-contained, offline HTML map of photo predictions.

:func:`write_map` turns the prediction table of ``python -m hiergeo.predict`` (one row per
photo) into a single HTML file that needs no network: the country polygons (Natural Earth,
shipped with :mod:`gazetteer`) are inline SVG paths, the data is a JSON block, thumbnails are
``data:`` URIs and the pan/zoom/popup code is a page of hand-written JavaScript. A
Content-Security-Policy in the page forbids every load that is not inline or ``data:``.

Open a row directly with ``map.html#select=<id>`` (the id URL-encoded).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .photo_map_layout import link_segments, stacks
from .photo_map_page import CSS, JS

log = logging.getLogger(__name__)

LEVELS = ("country", "region", "subregion", "city")
#: Marker colour per ``confident_level`` ("" = not even the country is sure), finest first.
LEVEL_COLOURS = {
    "city": "#1a9641",
    "subregion": "#a6d96a",
    "region": "#fdae61",
    "country": "#d7191c",
    "": "#7b3294",
}
LEVEL_LABELS = {
    "city": "sure down to the city",
    "subregion": "sure down to the subregion",
    "region": "sure down to the region",
    "country": "sure of the country only",
    "": "not even the country sure",
}
SEA_COLOUR = "#cfe2ee"
LAND_COLOUR = "#ece6d6"
BORDER_COLOUR = "#9c927c"
PAGE_COLOUR = "#b9c3c9"
#: Douglas-Peucker tolerance (degrees) for the base layer, and the area (square degrees) under
#: which an island is dropped unless it is its country's largest part.
SIMPLIFY_DEG = 0.05
MIN_PART_AREA = 0.004
#: Base-layer coordinates are integers in units of 1/COORD_SCALE degree (about 1 km).
COORD_SCALE = 100
#: First view: the whole world from 85 N to 62 S, as an SVG viewBox (x = lon, y = -lat).
WORLD_VIEW = (-180.0, -85.0, 360.0, 147.0)
REQUIRED = ("id", "pred_latitude", "pred_longitude")
THUMB_LIMIT = "only the first {} photos with a file get a thumbnail"


# ---------------------------------------------------------------------------------------------
# Base layer


def _ring_path(coords: np.ndarray) -> str:
    """SVG path data for one closed ring: absolute move, then relative integer steps."""
    pts = np.round(coords[:, :2] * (COORD_SCALE, -COORD_SCALE)).astype(np.int64)
    steps = np.diff(pts, axis=0)
    steps = steps[(steps != 0).any(axis=1)]
    if len(steps) < 2:
        return ""
    body = " ".join(map(str, steps.ravel().tolist())).replace(" -", "-")
    return f"M{pts[0, 0]} {pts[0, 1]}l{body}z"


@lru_cache(maxsize=4)
def country_paths(tolerance: float = SIMPLIFY_DEG) -> tuple[tuple[str, str], ...]:
    """``(name, path data)`` per Natural Earth country, simplified by ``tolerance`` degrees.

    Path coordinates are integers in 1/``COORD_SCALE`` degree with y = -lat; draw them inside
    ``scale(1/COORD_SCALE)``. Cached: the second map of a session skips the geometry work.
    Countries that cross the antimeridian are already split in Natural Earth, so a plain
    equirectangular projection draws them correctly.
    """
    return tuple((name, d) for _, name, d in country_shapes(tolerance))


@lru_cache(maxsize=4)
def country_shapes(tolerance: float = SIMPLIFY_DEG) -> tuple[tuple[str, str, str], ...]:
    """``(ISO alpha-2 code, name, path data)`` per Natural Earth country (the gazetteer's
    country keys; ``""`` where Natural Earth has none), as :func:`country_paths`."""
    import shapely

    from gazetteer.boundaries import BoundarySource

    frame = BoundarySource().read(0)
    out = []
    for code, name, geom in zip(frame["code"], frame["name"], frame.geometry, strict=True):
        # Natural Earth leaves a few names empty (Tokelau; an unclaimed remainder coded -1)
        name = _text(name) or ("" if _text(code) in (None, "-1") else str(code))
        simple = shapely.simplify(geom, tolerance, preserve_topology=True)
        parts = [p for p in shapely.get_parts(simple) if not p.is_empty]
        if not parts:
            continue
        areas = [p.area for p in parts]
        largest = int(np.argmax(areas))
        rings = []
        for i, (part, area) in enumerate(zip(parts, areas, strict=True)):
            if area < MIN_PART_AREA and i != largest:
                continue  # a speck of an island: invisible at world scale, costly in bytes
            for ring in (part.exterior, *part.interiors):
                rings.append(_ring_path(np.asarray(ring.coords)))
        d = "".join(rings)
        if d:
            out.append((_text(code) or "", name, d))
    return tuple(out)


def _land_svg() -> str:
    return "".join(f'<path d="{d}"><title>{html.escape(name)}</title></path>' if name
                   else f'<path d="{d}"/>' for name, d in country_paths())


# ---------------------------------------------------------------------------------------------
# Rows -> JSON


def _num(value, ndigits: int) -> float | None:
    """A finite float rounded to ``ndigits``, or None (JSON null) for NaN/None/inf."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return round(x, ndigits) if math.isfinite(x) else None


def _text(value) -> str | None:
    """A string, or None for None/NaN (a missing level is null, never the string "nan")."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _path_text(value) -> str | None:
    """The photo's path as text, or None when it came from memory (None, NaN, empty)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = _text(value)
    return text if text and text.strip() else None


def _thumbnail(path: str, thumb_px: int) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for a JPEG thumbnail of ``path`` (longest side ``thumb_px``, never
    enlarged), or ``(None, reason)``."""
    from PIL import Image

    from ..data.images import load_image

    result = load_image(path)
    if result.image is None:
        return None, result.reason
    img = result.image
    img.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


def _top_k(columns) -> list[int]:
    return sorted(int(m.group(1)) for c in columns if (m := re.fullmatch(r"path_(\d+)", str(c))))


def _errors_km(table: pd.DataFrame) -> np.ndarray:
    """Per-row error: ``error_km`` where given, else haversine from the truth columns."""
    n = len(table)
    err = (pd.to_numeric(table["error_km"], errors="coerce").to_numpy(np.float64, copy=True)
           if "error_km" in table else np.full(n, np.nan))
    if {"true_latitude", "true_longitude"} <= set(table.columns):
        from ..metrics import haversine_km

        tl = pd.to_numeric(table["true_latitude"], errors="coerce").to_numpy(np.float64)
        tn = pd.to_numeric(table["true_longitude"], errors="coerce").to_numpy(np.float64)
        pl = pd.to_numeric(table["pred_latitude"], errors="coerce").to_numpy(np.float64)
        pn = pd.to_numeric(table["pred_longitude"], errors="coerce").to_numpy(np.float64)
        gap = ~np.isfinite(err) & np.isfinite(tl + tn + pl + pn)
        if gap.any():
            err[gap] = haversine_km(pl[gap], pn[gap], tl[gap], tn[gap])
    return err


#: Why a level of the top path has no name (shown in the panel after a dash).
NO_LEVEL = "no such level here"
NO_NAME = "no name in the gazetteer"
UNSURE = "below the threshold"


def _levels(rec: dict, sure: str) -> list[list]:
    """``[[level, name or None, p or None, note or None], ...]`` for every level: a level the
    top path lacks is kept, with a note saying why, rather than left out of the panel."""
    depth = LEVELS.index(sure) if sure in LEVELS else -1
    out = []
    for j, lv in enumerate(LEVELS):
        name = _text(rec.get(lv))
        name = name if name and name.strip() else None
        key = _text(rec.get(f"{lv}_key"))
        if name is None:
            note = NO_NAME if key and key.strip() else NO_LEVEL
        else:
            note = UNSURE if j > depth else None
        out.append([lv, name, _num(rec.get(f"p_{lv}"), 4) if name else None, note])
    return out


def map_rows(table: pd.DataFrame, *, thumbnails: bool = True, thumb_px: int = 160,
             max_thumbnails: int = 2000) -> tuple[list[dict], int]:
    """The JSON records of the rows with a valid predicted position, and how many were skipped.

    Each record: ``id, lat, lon, lvl, ans, tlat, tlon, err, file, credit`` (the photo's
    attribution, from a ``credit`` column), ``th`` (thumbnail data URI or
    null), ``why`` (why there is no thumbnail), ``paths`` (``[[path, p], ...]``, best first)
    ``levels`` (``[[level, name, p, note], ...]`` along the top path, every level: a missing
    one has name null and a note saying why, see :func:`_levels`) and, where the truth is known,
    ``line`` (the prediction-to-truth line,
    :func:`~.photo_map_layout.link_segments`).
    """
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"prediction table: missing column(s) {missing}; "
                         f"columns are {list(table.columns)}")
    lat = pd.to_numeric(table["pred_latitude"], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(table["pred_longitude"], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    skipped = int((~ok).sum())
    if skipped:
        log.warning("photo map: %d of %d rows have no valid predicted position; not drawn",
                    skipped, len(table))
    err = _errors_km(table)
    has_truth = {"true_latitude", "true_longitude"} <= set(table.columns)
    ks = _top_k(table.columns)
    rows = []
    n_thumbs = 0
    records = table.to_dict("records")
    todo = np.flatnonzero(ok)
    if thumbnails and len(todo) > 50:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc="photo map thumbnails", unit="photo")
    for i in todo:
        rec = records[i]
        level = (_text(rec.get("confident_level")) or "").strip().lower()
        row = {
            "id": _text(rec["id"]) or f"row {i}",
            "lat": _num(lat[i], 5), "lon": _num(lon[i], 5),
            "lvl": level if level in LEVEL_COLOURS else "",
            "ans": _text(rec.get("answer")) or "",
            "tlat": _num(rec.get("true_latitude"), 5) if has_truth else None,
            "tlon": _num(rec.get("true_longitude"), 5) if has_truth else None,
            "err": _num(err[i], 1),
            "file": _path_text(rec.get("path")),
            "credit": _text(rec.get("credit")),
            "paths": [[_text(rec.get(f"path_{k}")) or "", _num(rec.get(f"p_{k}"), 4)]
                      for k in ks if _text(rec.get(f"path_{k}"))],
            "levels": _levels(rec, level) if any(lv in table.columns for lv in LEVELS) else [],
            "th": None, "why": None,
        }
        if row["tlat"] is None or row["tlon"] is None:
            row["tlat"] = row["tlon"] = None
        else:
            row["line"] = link_segments(row["lat"], row["lon"], row["tlat"], row["tlon"])
        if not thumbnails:
            row["why"] = "thumbnails were turned off"
        elif row["file"] is None:
            row["why"] = "no file: the photo was given in memory"
        elif n_thumbs >= max_thumbnails:
            row["why"] = THUMB_LIMIT.format(max_thumbnails)
        else:
            row["th"], row["why"] = _thumbnail(row["file"], thumb_px)
            n_thumbs += 1
        rows.append(row)
    return rows, skipped


def _script_json(obj) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` can end
    the block or open a comment (JSON.parse reads the ``\\u`` escapes back)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


# ---------------------------------------------------------------------------------------------
# Page


def _initial_view(rows: list[dict]) -> list[float]:
    """The world, widened when a marker lies outside it (Antarctica, far north)."""
    x, y, w, h = WORLD_VIEW
    ys = [-r["lat"] for r in rows] + [-r["tlat"] for r in rows if r["tlat"] is not None]
    top, bottom = min([y, *ys]) - 3, max([y + h, *ys]) + 3
    top, bottom = max(top, -90.0), min(bottom, 90.0)
    return [x, round(min(y, top), 2), w, round(max(y + h, bottom) - min(y, top), 2)]


def _legend(rows: list[dict], has_truth: bool) -> str:
    counts = {lv: 0 for lv in LEVEL_COLOURS}
    for r in rows:
        counts[r["lvl"]] += 1
    items = []
    for lv, colour in LEVEL_COLOURS.items():
        items.append(
            f'<li><svg width="14" height="14"><circle cx="7" cy="7" r="5.5" fill="{colour}" '
            f'stroke="#1b1b1b"/></svg>{html.escape(LEVEL_LABELS[lv])} ({counts[lv]})</li>')
    if has_truth:
        items.append('<li><svg width="14" height="14"><circle cx="7" cy="7" r="3.5" '
                     'fill="#fff" stroke="#000" stroke-width="1.5"/></svg>true position</li>')
        items.append('<li><svg width="14" height="14"><line x1="1" y1="13" x2="13" y2="1" '
                     'stroke="#333" stroke-dasharray="3 2"/></svg>prediction to truth (faint; '
                     'a marker\'s own line shows strongly under the pointer)</li>')
    if any(len(s["rows"]) > 1 for s in stacks(rows)):
        items.append('<li><svg width="14" height="14"><text x="1" y="11" font-size="10" '
                     'font-weight="bold">×n</text></svg>n photos predicted at one spot '
                     '(click for the list)</li>')
    return ('<div id="legend"><b>Prediction, coloured by how far down the answer is sure'
            f'</b><ul>{"".join(items)}</ul><small>Drag to pan, wheel or +/- to zoom, click a '
            'marker for details.</small></div>')


def _header(title: str, rows: list[dict], skipped: int, thumbs_cut: int,
            sampled_from: int | None = None) -> str:
    facts = [f"{len(rows)} photo{'s' if len(rows) != 1 else ''} on the map"]
    if sampled_from:
        facts.append(f"an even sample of {sampled_from:,} photos")
    if skipped:
        facts.append(f"{skipped} without a predicted position (not drawn)")
    errs = [r["err"] for r in rows if r["err"] is not None]
    if errs:
        facts.append(f"median error {float(np.median(errs)):,.1f} km "
                     f"over {len(errs)} with a known position")
    if thumbs_cut:
        facts.append(f"{thumbs_cut} without a thumbnail (limit reached)")
    spans = "".join(f'<span class="fact">{html.escape(f)}</span>' for f in facts)
    return f'<header><h1>{html.escape(title)}</h1><div id="facts">{spans}</div></header>'


def _marker_px(n: int) -> dict[str, float]:
    """Marker diameters (screen pixels): smaller when there are many, so crowds stay legible."""
    f = 1.0 if n <= 300 else 0.8 if n <= 2000 else 0.65
    return {"PRED_O": round(13 * f, 1), "PRED_I": round(11 * f, 1),
            "TRUTH_O": round(8.5 * f, 1), "TRUTH_I": round(5.5 * f, 1)}


def _link_style(n: int) -> dict[str, float]:
    """Prediction-to-truth lines: thin and faint by default (with a hundred photos they would
    otherwise weave a web over the map), fainter still as photos get more numerous; the line
    of the marker under the pointer or selected is drawn strongly on top (``#hov``, ``#sel``)."""
    return {"LINK_W": 0.8 if n <= 30 else 0.6, "LINK_O": 0.45 if n <= 30 else 0.25 if n <= 300
            else 0.15}


def _css(n_markers: int = 0) -> str:
    levels = "".join(
        f".pred.lv-{lv or 'none'},#sel .lv-{lv or 'none'}{{stroke:{c}}}"
        f".badge.lv-{lv or 'none'}{{background:{c}}}"
        for lv, c in LEVEL_COLOURS.items())
    css = CSS.replace("/*LEVELS*/", levels)
    subs = {"SEA": SEA_COLOUR, "LAND": LAND_COLOUR, "BORDER": BORDER_COLOUR,
            "PAGE": PAGE_COLOUR, **_marker_px(n_markers), **_link_style(n_markers)}
    for key, value in subs.items():
        css = css.replace(key, str(value))
    return css


def render_html(rows: list[dict], skipped: int, *, title: str, thumbs_cut: int = 0,
                sampled_from: int | None = None) -> str:
    """The whole page as one string (see :func:`write_map`)."""
    has_truth = any(r["tlat"] is not None for r in rows)
    data = {"rows": rows, "stacks": stacks(rows), "view": _initial_view(rows),
            "levels": {lv or "none": LEVEL_LABELS[lv] for lv in LEVEL_COLOURS}}
    x, y, w, h = data["view"]
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_css(len(rows))}</style></head>
<body>
{_header(title, rows, skipped, thumbs_cut, sampled_from)}
<main>
<svg id="map" viewBox="{x} {y} {w} {h}" preserveAspectRatio="xMidYMid meet" role="img"
 aria-label="world map of predicted photo positions">
<rect id="sea" x="-180" y="-90" width="360" height="180"/>
<g id="land" transform="scale({1 / COORD_SCALE})">{_land_svg()}</g>
<g id="links"></g><g id="truths"></g><g id="preds"></g><g id="counts"></g><g id="hov"></g>
<g id="sel"></g>
</svg>
<div id="zoom"><button id="zin" title="zoom in">+</button><button id="zout"
 title="zoom out">&minus;</button><button id="zhome" title="whole world">&#8962;</button><button
 id="zfit" title="zoom to the photos">&#9635;</button></div>
{_legend(rows, has_truth)}
<aside id="panel" hidden><button id="pclose" title="close">&times;</button>
<div id="pbody"></div></aside>
</main>
<script type="application/json" id="photo-data">{_script_json(data)}</script>
<script>{JS}</script>
</body></html>
"""


def write_map(table: pd.DataFrame, path, *, thumbnails: bool = True, thumb_px: int = 160,
              title: str | None = None, max_thumbnails: int = 2000,
              max_markers: int = 20_000) -> Path:
    """Write an offline HTML map of ``table`` (the prediction table of ``hiergeo.predict``).

    One marker per photo at its predicted position, coloured by ``confident_level``; where
    ``true_latitude``/``true_longitude`` are known, a white dot at the truth and a faint dashed
    line to it (the short way round; drawn strongly for the marker under the pointer or
    selected). Photos at one spot share a marker with their count
    (:func:`~.photo_map_layout.stacks`); clicking it lists them. Clicking a marker shows its
    thumbnail, id, answer, top-K paths with probabilities, every level (a missing one with why)
    and error. Rows without a valid predicted position are skipped and counted in the header.

    Args:
        table: one row per photo; needs ``id, pred_latitude, pred_longitude``; uses ``path,
            answer, confident_level``, the per-level ``L, p_L``, ``path_k, p_k`` (k = 1..K) and
            the optional truth columns ``true_latitude, true_longitude, error_km``.
        path: the HTML file to write (atomically; parent folders are created).
        thumbnails: embed a JPEG thumbnail of each photo read from ``table.path``.
        thumb_px: longest side of a thumbnail (smaller photos are not enlarged).
        title: page title; default "Photo predictions".
        max_thumbnails: only the first this many drawn rows with a ``path`` get a thumbnail
            (about 5-10 kB of HTML each).
        max_markers: a larger table is drawn as an even sample of this many rows (the header
            says so): a browser cannot hold hundreds of thousands of markers, and the full
            answers are in the table files.

    Returns:
        The path written.
    """
    if thumb_px < 1 or max_thumbnails < 0:
        raise ValueError(f"thumb_px must be >= 1 and max_thumbnails >= 0, got {thumb_px}, "
                         f"{max_thumbnails}")
    sampled_from = None
    if len(table) > max_markers > 0:
        sampled_from = len(table)
        log.warning("photo map: %d rows; drawing an even sample of %d", len(table), max_markers)
        table = table.iloc[np.unique(np.linspace(0, len(table) - 1, max_markers).round()
                                     .astype(int))]
    rows, skipped = map_rows(table, thumbnails=thumbnails, thumb_px=thumb_px,
                             max_thumbnails=max_thumbnails)
    thumbs_cut = sum(r["why"] == THUMB_LIMIT.format(max_thumbnails) for r in rows)
    page = render_html(rows, skipped, title=title or "Photo predictions", thumbs_cut=thumbs_cut,
                       sampled_from=sampled_from)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("photo map: %d markers, %d skipped, %.1f kB -> %s", len(rows), skipped,
             len(page.encode("utf-8")) / 1e3, path)
    return path

