"""One self-contained, offline HTML page comparing models, for people who would rather look
than read: the overall figures with each difference's confidence interval, a world map of
where one model beats the other (per true country), and the per-country table.

The photo map's conventions (:mod:`hiergeo.reports.photo_map`): one file, no network (the
country shapes are inline SVG paths from the shipped Natural Earth polygons), a
Content-Security-Policy that forbids every load, every name escaped. It needs no script at
all: hovering a country shows its figures (an SVG ``<title>``).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write_text
from .photo_map import (
    BORDER_COLOUR,
    COORD_SCALE,
    LAND_COLOUR,
    SEA_COLOUR,
    WORLD_VIEW,
    country_shapes,
)

#: colours of "the model is better" / "the reference is better" (ColorBrewer RdBu ends)
BETTER, WORSE = "#2166ac", "#b2182b"
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")
CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
 sans-serif;color:#1d2327;background:#f4f6f7}
header{padding:10px 16px;background:#1f2d3a;color:#fff}
header h1{font-size:19px;margin:0 0 4px}
header span{margin-right:16px;color:#dfe7ee}
section{margin:14px 16px;padding:10px 14px;background:#fff;border:1px solid #ccd;
 border-radius:6px}
h2{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #e3e6e8;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.t{text-align:left}
th{background:#eef1f3;position:sticky;top:0}
td.win{color:BETTER;font-weight:600}td.lose{color:WORSE;font-weight:600}
.scroll{max-height:520px;overflow:auto}
svg{width:100%;height:auto;display:block;background:SEA}
#land path{fill:LAND;stroke:BORDER;stroke-width:0.6px;vector-effect:non-scaling-stroke}
#land path.d{stroke:#555}
#land path:hover{stroke:#000;stroke-width:1.5px}
.legend{display:flex;gap:14px;flex-wrap:wrap;margin-top:6px;font-size:13px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #777;vertical-align:-2px;
 margin-right:4px}
small{color:#555}
"""
SIGN = "\u2212"
DASH = "\u2013"


def country_differences(table: pd.DataFrame, metric: str = "geoscore",
                        model: str | None = None) -> pd.DataFrame:
    """Per country, ``metric``'s difference between one model (default the first compared)
    and the reference, from :func:`hiergeo.score.compare.compare`'s table: the columns
    ``country, name, n, diff, ci_low, ci_high, better`` and the two the maps draw, ``gain``
    (the difference signed so that positive means the model is better, whichever way the
    metric runs) and ``sure`` (the comparison names a better model)."""
    t = table[(table["scope"] == "country") & (table["metric"] == metric)]
    if model is None and len(t):
        model = t["model"].iloc[0]
    t = t[t["model"] == model]
    return pd.DataFrame({"country": t["name"].to_numpy(object),
                         "name": t["country_name"].to_numpy(object),
                         "n": t["n"].to_numpy(), "diff": t["diff"].to_numpy(float),
                         "ci_low": t["ci_low"].to_numpy(float),
                         "ci_high": t["ci_high"].to_numpy(float),
                         "better": t["better"].to_numpy(object),
                         "gain": np.where(t["higher_is_better"].to_numpy(bool), 1.0, -1.0)
                         * t["diff"].to_numpy(float),
                         "sure": (t["better"] != "").to_numpy(bool)})


def _fmt(metric: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "\u2013"
    if metric.startswith("acc_"):
        return f"{100 * v:.1f}%"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def _fmt_diff(metric: str, v) -> str:
    if v is None or not math.isfinite(v):
        return "\u2013"
    s = f"{100 * v:+.1f} pts" if metric.startswith("acc_") else (
        f"{v:+,.0f}" if abs(v) >= 100 else f"{v:+,.1f}")
    return s.replace("-", SIGN)


def _mix(colour: str, t: float) -> str:
    """``colour`` blended with white: ``t`` = 1 the colour, 0 white."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 - t * (255 - c)):02x}" for c in (r, g, b))


def _fill(gain: float, sure: bool, span: float) -> str:
    """Blue when the model is better (``gain`` > 0), red when worse, by size; pale when the
    comparison names no better model."""
    if not math.isfinite(gain):
        return LAND_COLOUR
    t = 0.25 + 0.75 * min(abs(gain) / span, 1.0) if span > 0 else 0.6
    return _mix(BETTER if gain > 0 else WORSE, t if sure else 0.18)


def _map(diffs: pd.DataFrame, metric: str, model: str, reference: str) -> str:
    by = {r.country: r for r in diffs.itertuples()}
    finite = diffs["gain"].to_numpy(float)
    finite = finite[np.isfinite(finite)]
    span = float(np.abs(finite).max()) if len(finite) else 0.0
    paths = []
    for code, name, d in country_shapes():
        r = by.get(code)
        if r is None:
            paths.append(f'<path d="{d}"><title>{html.escape(name)}: no photos</title></path>')
            continue
        tip = (f"{name} ({code}), {r.n} photos: {metric} {model} {SIGN} {reference} = "
               f"{_fmt_diff(metric, r.diff)} [95% CI {_fmt_diff(metric, r.ci_low)}, "
               f"{_fmt_diff(metric, r.ci_high)}]")
        fill = _fill(r.gain, r.sure, span)
        paths.append(f'<path class="d" d="{d}" style="fill:{fill}">'
                     f"<title>{html.escape(tip)}</title></path>")
    x, y, w, h = WORLD_VIEW
    legend = (f'<div class="legend"><span><i class="sw" style="background:{BETTER}"></i>'
              f"{html.escape(model)} better</span><span><i class=\"sw\" style=\"background:"
              f'{WORSE}"></i>{html.escape(reference)} better</span><span><i class="sw" '
              f'style="background:{_mix(BETTER, 0.18)}"></i><i class="sw" style="background:'
              f'{_mix(WORSE, 0.18)}"></i>the 95% interval includes 0</span><span><i '
              f'class="sw" style="background:{LAND_COLOUR}"></i>no photos</span></div>')
    return (f'<svg viewBox="{x} {y} {w} {h}" role="img" aria-label="difference per country">'
            f'<rect x="-180" y="-90" width="360" height="180" fill="{SEA_COLOUR}"/>'
            f'<g id="land" transform="scale({1 / COORD_SCALE})">{"".join(paths)}</g></svg>'
            + legend)


def _difference_cells(d: dict, metric: str) -> str:
    """The difference, its interval and the verdict of one comparison row, as table cells."""
    cls = "win" if d["better"] == d["model"] else "lose" if d["better"] else ""
    return (f"<td class=\"{cls}\">{_fmt_diff(metric, d['diff'])}</td>"
            f"<td>{_fmt_diff(metric, d['ci_low'])} to {_fmt_diff(metric, d['ci_high'])}</td>"
            f"<td class=\"t\">{html.escape(d['better']) or DASH}</td>")


def _overall(table: pd.DataFrame, models: list[str]) -> str:
    t = table[table["scope"] == "overall"]
    head = ("<tr><th>metric</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models)
            + "<th>compared</th><th>difference</th><th>95% interval</th><th>better</th></tr>")
    rows = []
    for d in t.to_dict("records"):  # not itertuples: model names need not be identifiers
        rows.append(
            f"<tr><td>{html.escape(d['metric'])}</td>"
            + "".join(f"<td>{_fmt(d['metric'], d[m])}</td>" for m in models)
            + f"<td class=\"t\">{html.escape(d['model'])} vs {html.escape(d['reference'])}</td>"
            + _difference_cells(d, d["metric"]) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _countries(table: pd.DataFrame, models: list[str], metric: str, model: str) -> str:
    t = table[(table["scope"] == "country") & (table["metric"] == metric)
              & (table["model"] == model)]
    head = ("<tr><th>country</th><th>name</th><th>photos</th>"
            + "".join(f"<th>{html.escape(m)}</th>" for m in models)
            + "<th>difference</th><th>95% interval</th><th>better</th></tr>")
    rows = []
    for d in t.to_dict("records"):  # not itertuples: model names need not be identifiers
        rows.append(
            f"<tr><td>{html.escape(d['name'])}</td><td class=\"t\">"
            f"{html.escape(d['country_name'])}</td><td>{d['n']:,}</td>"
            + "".join(f"<td>{_fmt(metric, d[m])}</td>" for m in models)
            + _difference_cells(d, metric) + "</tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def render_compare(table: pd.DataFrame, models: list[str], *, title: str, facts: list[str],
                   metric: str = "geoscore") -> str:
    """The page as one string (see :func:`write_compare`)."""
    # the model compared first with the reference is the one the map shows
    pair = table[table["scope"] == "overall"][["model", "reference"]].iloc[0]
    diffs = country_differences(table, metric, pair["model"])
    css = CSS
    for k, v in {"BETTER": BETTER, "WORSE": WORSE, "SEA": SEA_COLOUR, "LAND": LAND_COLOUR,
                 "BORDER": BORDER_COLOUR}.items():
        css = css.replace(k, v)
    spans = "".join(f"<span>{html.escape(f)}</span>" for f in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{css}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>{spans}</header>
<section><h2>Overall</h2>{_overall(table, models)}
<small>Differences are the model minus the reference on the same photos; the interval is a
paired bootstrap over photos. Lower is better for mean_km and median_km, higher for the
rest; "better" is empty when the interval includes 0.</small></section>
<section><h2>Where {html.escape(pair["model"])} beats {html.escape(pair["reference"])}:
{html.escape(metric)} per true country</h2>{_map(diffs, metric, pair["model"],
                                                    pair["reference"])}
<small>Hover a country for its figures.</small></section>
<section><h2>Per country ({html.escape(metric)})</h2>{_countries(table, models, metric,
                                                               pair["model"])}</section>
</body></html>
"""


def write_compare(table: pd.DataFrame, models: list[str], path: str | Path, *,
                  title: str = "Model comparison", facts: list[str] | None = None,
                  metric: str = "geoscore") -> Path:
    """Write the comparison page of ``table`` (:func:`hiergeo.score.compare.compare`) to
    ``path`` (atomically): ``models`` its model columns, ``facts`` short lines for the header,
    ``metric`` the one the map and the country table show."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_compare(table, models, title=title, facts=facts or [],
                                           metric=metric))
    return path
