"""Comparing models on the same photos: every metric per model, overall and per true
country, and each model's difference from a reference with a paired bootstrap confidence
interval.

The bootstrap resamples *rows* (photos) with replacement, the same rows for every model in a
resample (paired: the photos' own difficulty cancels out of the difference), ``resamples``
times from a seeded generator, and takes the ``(1 - level) / 2`` and ``(1 + level) / 2``
percentiles of the resampled differences (percentile interval). Per country, the rows of
that country are resampled. A difference whose interval excludes 0, on at least
:data:`MIN_ROWS` photos, names the better model in ``better``; otherwise ``better`` is empty.

Two cautions. Percentile intervals from few photos are too narrow (one photo gives an
interval of one point), hence :data:`MIN_ROWS`: a smaller country's difference is shown but
names no winner. And each country's interval is a 95% interval on its own: among a couple of
hundred countries about 5% of the verdicts can be wrong by chance (no correction for
multiple comparisons is made), so read a single country's verdict as a pointer, not a result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS

from ..metrics import THRESHOLDS_KM, geoscore
from ..reports.compare_page import country_differences
from .scoring import Scored

__all__ = ["COUNTRY_METRICS", "METRICS", "MIN_ROWS", "compare", "country_differences",
           "paired_bootstrap"]

#: metric -> True when higher is better. Overall, every OSV-5M figure; per country, these.
METRICS = {"geoscore": True, "mean_km": False, "median_km": False,
           **{f"acc_{r}km": True for r in THRESHOLDS_KM},
           **{f"acc_{lvl}": True for lvl in LEVELS}}
COUNTRY_METRICS = ("geoscore", "median_km", *(f"acc_{lvl}" for lvl in LEVELS))
#: fewest photos in a scope for ``better`` to name a winner (below it, percentile intervals are
#: too narrow to trust)
MIN_ROWS = 30
#: bootstrap index entries drawn at a time (resamples x rows), bounding memory (~160 MB)
BLOCK = 20_000_000


def _columns(s: Scored) -> dict[str, np.ndarray]:
    """Per-row values each metric is a mean (or median) of."""
    km = s.rows["km"].to_numpy(np.float64)
    out = {"km": km, "score": geoscore(km)}
    for r in THRESHOLDS_KM:
        out[f"in_{r}"] = (km < r).astype(np.float64)
    for lvl in LEVELS:
        out[f"hit_{lvl}"] = s.rows[f"hit_{lvl}"].to_numpy(np.float64)
    return out


def _metric(name: str, cols: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """``name`` over the rows ``idx`` (``[..., n]``; a resample per leading index)."""
    if name == "median_km":
        return np.median(cols["km"][idx], axis=-1)
    if name == "mean_km":
        return cols["km"][idx].mean(-1)
    if name == "geoscore":
        return cols["score"][idx].mean(-1)
    if name.endswith("km"):
        return cols[f"in_{name[4:-2]}"][idx].mean(-1)
    v = cols[f"hit_{name[4:]}"][idx]
    present = ~np.isnan(v)
    n = present.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(v, axis=-1) / np.maximum(n, 1), np.nan)


def paired_bootstrap(cols: list[dict[str, np.ndarray]], rows: np.ndarray, names, *,
                     resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per metric of ``names``, ``[resamples, models]`` values on the same resampled ``rows``
    for every model."""
    out = {m: np.empty((resamples, len(cols))) for m in names}
    n = len(rows)
    step = max(1, BLOCK // max(n, 1))
    for s in range(0, resamples, step):
        b = min(step, resamples - s)
        idx = rows[rng.integers(0, n, size=(b, n))]
        for m in names:
            for j, c in enumerate(cols):
                out[m][s:s + b, j] = _metric(m, c, idx)
    return out


def _interval(d: np.ndarray, level: float) -> tuple[float, float]:
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan")
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _scope_rows(scope: str, name: str, rows: np.ndarray, models: list[Scored], cols,
                metric_names, reference: int, resamples: int, level: float,
                rng: np.random.Generator) -> list[dict]:
    point = {m: [float(_metric(m, c, rows)) for c in cols] for m in metric_names}
    boot = paired_bootstrap(cols, rows, metric_names, resamples=resamples, rng=rng)
    out = []
    for m in metric_names:
        for j, s in enumerate(models):
            if j == reference:
                continue
            diff = point[m][j] - point[m][reference]
            lo, hi = _interval(boot[m][:, j] - boot[m][:, reference], level)
            up = METRICS[m]
            better = ""
            if len(rows) >= MIN_ROWS and (lo > 0 or hi < 0):
                better = s.name if (lo > 0) == up else models[reference].name
            out.append({"scope": scope, "name": name, "n": len(rows), "metric": m,
                        **{t.name: point[m][k] for k, t in enumerate(models)},
                        "model": s.name, "reference": models[reference].name,
                        "diff": diff, "ci_low": lo, "ci_high": hi, "better": better,
                        "higher_is_better": up})
    return out


def compare(models: list[Scored], *, reference: int = 0, resamples: int = 1000,
            level: float = 0.95, seed: int = 0, country_names: dict | None = None
            ) -> pd.DataFrame:
    """The comparison table of ``models`` (scored on the same rows, in the same order).

    One row per scope (``overall``, then each true country, largest first), metric and
    model other than the reference. Columns: ``scope`` (``overall`` or ``country``),
    ``name`` (``all`` or the country code), ``country_name``, ``n`` (rows), ``metric``,
    one column per model with its value, ``model`` and ``reference`` (the two compared),
    ``diff`` (model minus reference, on every row of the scope), ``ci_low, ci_high`` (the
    paired bootstrap interval at ``level``), ``better`` (the model the interval favours, or
    empty: the interval holds 0, or fewer than :data:`MIN_ROWS` rows),
    ``higher_is_better`` (False for ``mean_km`` and ``median_km``).
    """
    if len(models) < 2:
        raise ValueError("comparing needs at least two models")
    if not 0 < level < 1 or resamples < 10:
        raise ValueError(f"need 0 < level < 1 and resamples >= 10, got {level}, {resamples}")
    ids = models[0].rows["id"].to_numpy(object)
    for s in models[1:]:
        if not np.array_equal(s.rows["id"].to_numpy(object), ids):
            raise ValueError(f"{s.name} is scored on other rows than {models[0].name}")
    cols = [_columns(s) for s in models]
    country = models[0].rows["true_country"].to_numpy(object)
    codes, counts = np.unique(country, return_counts=True)
    # one random stream for the whole set and one per country (fixed by its sorted code)
    streams = np.random.SeedSequence(seed).spawn(len(codes) + 1)
    out = _scope_rows("overall", "all", np.arange(len(ids)), models, cols, list(METRICS),
                      reference, resamples, level, np.random.default_rng(streams[0]))
    for k in np.lexsort((codes, -counts)):
        rows = np.flatnonzero(country == codes[k])
        out += _scope_rows("country", str(codes[k]) or "(none)", rows, models, cols,
                           COUNTRY_METRICS, reference, resamples, level,
                           np.random.default_rng(streams[k + 1]))
    table = pd.DataFrame(out)
    names = country_names or {}
    table.insert(2, "country_name", [names.get(c, "") if s == "country" else ""
                                     for s, c in zip(table["scope"], table["name"],
                                                     strict=True)])
    return table
