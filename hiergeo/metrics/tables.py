"""Entity accuracy from predicted paths, and the per-country table analysts read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS

from .osv5m import (
    LEVEL_NAMES,
    geoscore,
    haversine_km,
    hits_from_keys,
    osv5m_summary,
    predicted_keys,
    truth_keys,
)


def entity_accuracy(paths: np.ndarray, truth_ids: np.ndarray, ks=(1, 5)) -> dict:
    """Top-k accuracy per level from the predicted paths themselves.

    Args:
        paths: ``[n, K, 4]`` entity ids of the top-K paths (best first), -1 for padding.
        truth_ids: ``[n, 4]`` true entity ids, -1 where the truth is missing (not counted).
    Returns:
        ``{"top1_country": ..., "top5_city": ..., "n_country": ...}``.
    """
    paths, truth_ids = np.asarray(paths), np.asarray(truth_ids)
    out = {}
    for j, lvl in enumerate(LEVELS):
        present = truth_ids[:, j] >= 0
        out[f"n_{lvl}"] = int(present.sum())
        for k in ks:
            hit = (paths[:, :k, j] == truth_ids[:, j, None]).any(axis=1)
            out[f"top{k}_{lvl}"] = float(hit[present].mean()) if present.any() else float("nan")
    return out


def per_country(truth_country: np.ndarray, pred_country: np.ndarray, km: np.ndarray,
                hits: pd.DataFrame, names: dict | None = None) -> pd.DataFrame:
    """One row per true country, sorted by n (largest first).

    Columns: ``country`` (code; ``""`` for rows without a true country), ``name``, ``n``,
    ``mean_km``, ``median_km``, ``geoscore``; per level ``n_<level>`` (rows with a true key),
    ``hits_<level>`` and ``acc_<level>`` (OSV-5M hits); ``top_confusion`` (most frequent
    predicted country among the wrong ones, ``""`` if none) and ``top_confusion_n``.
    The ``n``, ``n_<level>`` and ``hits_<level>`` columns sum to the global counts.
    """
    tc = pd.Series(truth_country, dtype="object").fillna("").astype(str).to_numpy()
    pc = pd.Series(pred_country, dtype="object").fillna("").astype(str).to_numpy()
    km = np.asarray(km, np.float64)
    df = pd.DataFrame({"country": tc, "pred": pc, "km": km, "score": geoscore(km)})
    for lvl in LEVELS:
        col = hits[LEVEL_NAMES[lvl]].reset_index(drop=True)
        df[f"n_{lvl}"] = col.notna().to_numpy().astype(np.int64)
        df[f"hits_{lvl}"] = col.fillna(False).to_numpy().astype(np.int64)
    g = df.groupby("country", sort=False)
    out = pd.DataFrame({"n": g.size(), "mean_km": g["km"].mean(), "median_km": g["km"].median(),
                        "geoscore": g["score"].mean()})
    for lvl in LEVELS:
        out[f"n_{lvl}"] = g[f"n_{lvl}"].sum()
        out[f"hits_{lvl}"] = g[f"hits_{lvl}"].sum()
        out[f"acc_{lvl}"] = out[f"hits_{lvl}"] / out[f"n_{lvl}"].where(out[f"n_{lvl}"] > 0)
    wrong = df[df["pred"] != df["country"]]
    conf = wrong.groupby(["country", "pred"]).size().reset_index(name="k")
    conf = conf.sort_values(["country", "k", "pred"], ascending=[True, False, True])
    top = conf.drop_duplicates("country").set_index("country")
    out["top_confusion"] = top["pred"].reindex(out.index).fillna("")
    out["top_confusion_n"] = top["k"].reindex(out.index).fillna(0).astype(np.int64)
    out = out.reset_index()
    names = names or {}
    out.insert(1, "name", [names.get(c, "") for c in out["country"]])
    return out.sort_values(["n", "country"], ascending=[False, True]).reset_index(drop=True)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A plain Markdown table (no extra dependency)."""
    def fmt(v):
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "| " + " | ".join("---" for _ in df.columns) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PointScores:
    """Predicted points scored against the truth, OSV-5M's way (:func:`score_points`).

    Attributes:
        keys: the predicted points' keys per level (reverse-geocoded).
        hits: OSV-5M's hits per level.
        summary: every OSV-5M metric (:func:`~hiergeo.metrics.osv5m_summary`).
        km: ``[n]`` the error of each point.
        truth_keys: the truth's keys per level.
        per_country: the per-country table (:func:`per_country`).
    """

    keys: pd.DataFrame
    hits: pd.DataFrame
    summary: dict
    km: np.ndarray
    truth_keys: pd.DataFrame
    per_country: pd.DataFrame


def score_points(lat, lon, truth: pd.DataFrame, geocoder,
                 country_names: dict | None = None) -> PointScores:
    """Score predicted points against ``truth`` (coordinates and OSV-5M key columns): the one
    sequence ``hiergeo.evaluate`` and ``hiergeo.score`` both use, so their figures agree.
    ``geocoder`` as :func:`~hiergeo.metrics.predicted_keys` takes it."""
    pk = predicted_keys(lat, lon, geocoder)
    hits = hits_from_keys(pk, truth)
    summary = osv5m_summary(lat, lon, truth, hits=hits)
    km = haversine_km(lat, lon, truth["latitude"], truth["longitude"])
    tkeys = truth_keys(truth)
    table = per_country(tkeys["country"].to_numpy(object), pk["country"].to_numpy(object),
                        km, hits, country_names)
    return PointScores(keys=pk, hits=hits, summary=summary, km=np.asarray(km), truth_keys=tkeys,
                       per_country=table)


def has_labels(truth: pd.DataFrame) -> bool:
    """Whether a truth table carries a full set of OSV-5M's key or part columns."""
    return (all(c in truth.columns for c in OSV5M_KEY_COLUMNS.values())
            or all(c in truth.columns for c in OSV5M_PART_COLUMNS.values()))


def with_truth_keys(truth: pd.DataFrame, geocoder) -> tuple[pd.DataFrame, str]:
    """``truth`` with OSV-5M key columns: its own label columns when it has them, else the
    keys of its coordinates reverse-geocoded by ``geocoder`` (OSV-5M labelled its images
    so). Returns the table and where the labels came from."""
    if has_labels(truth):
        return truth, "the truth's OSV-5M label columns"
    lab = predicted_keys(truth["latitude"].to_numpy(float), truth["longitude"].to_numpy(float),
                         geocoder)
    keyed = truth.assign(**{OSV5M_KEY_COLUMNS[lvl]: lab[lvl].to_numpy(object)
                            for lvl in LEVELS})
    return keyed, "the gazetteer's osv5m mode (the truth has no label columns)"
