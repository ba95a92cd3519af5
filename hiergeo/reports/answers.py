"""The answer to "where was this photo taken?", as a table a person reads: one row per photo
with the best path's names, keys and calibrated probabilities, the level the model is sure
of, the top-k paths (:func:`prediction_table`); scored against a known position
(:func:`score_truth`); written as CSV, Parquet or GeoJSON (:func:`write_table`,
:func:`write_outputs`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS

from ..predict import Prediction

log = logging.getLogger(__name__)

SEP = " › "
OUT_SUFFIXES = {".csv", ".parquet", ".geojson"}
#: Alternative paths (the 2nd of the top-k and after) less probable than this are left out:
#: at 1e-6 a path is noise, and a column of them buries the answers worth reading.
PATH_FLOOR = 1e-6
#: What CSV and GeoJSON keep (Parquet and the tables in memory keep every digit):
#: probabilities to 4 significant digits, coordinates to 6 decimals (~0.1 m), km to 3 (1 m).
P_DIGITS, COORD_DECIMALS, KM_DECIMALS = 4, 6, 3


def _readable(names: np.ndarray, path: np.ndarray) -> str:
    """``Bolivia › La Paz › … › El Alto`` for a path of entity ids (placeholder entities,
    which have no name, are left out)."""
    return SEP.join(n for n in (names[i] for i in path if i >= 0) if n)


def prediction_table(pred: Prediction, entities: pd.DataFrame, ids, paths=None,
                     topk: int | None = None) -> pd.DataFrame:
    """One row per query of ``pred`` (entity ids index ``entities``' rows).

    Columns: ``id, path, pred_latitude, pred_longitude, answer, confident_level``; per level
    L (country, region, subregion, city): ``L`` (name), ``L_key`` and ``p_L`` (the calibrated
    probability that the best path is right down to L: the product of its conditional
    probabilities; NaN where it stops above L); per path k of the top-k (``topk`` columns,
    default as many as ``pred`` has; empty where fewer paths exist, and for paths after the
    first less probable than :data:`PATH_FLOOR`): ``path_k`` (names), ``key_k`` (its deepest
    entity's key) and ``p_k`` (its probability). ``answer`` says what
    the model is sure of (probability >= the model's threshold), e.g. ``Bolivia, region
    unsure``; ``confident_level`` is that level's name ("" when not even the country)."""
    names = entities["name"].fillna("").astype(str).to_numpy(object)
    keys = entities["key"].astype(str).to_numpy(object)
    n, k = pred.paths.shape[:2]
    prob = pred.path_prob
    top = pred.paths[:, 0, :]
    out = {"id": np.asarray(ids, object),
           "path": np.asarray(paths, object) if paths is not None else np.full(n, None),
           "pred_latitude": pred.lat, "pred_longitude": pred.lon}
    conf = pred.confident_level
    answers = []
    for i in range(n):
        c = int(conf[i])
        if c < 0:
            best = _readable(names, top[i, :1]) or "?"
            answers.append(f"country unsure (best guess {best}, {prob[i, 0, 0]:.0%})")
            continue
        sure = _readable(names, top[i, :c + 1])
        deeper = c + 1 < len(LEVELS) and top[i, c + 1] >= 0
        answers.append(f"{sure}, {LEVELS[c + 1]} unsure" if deeper else sure)
    out["answer"] = np.array(answers, object)
    out["confident_level"] = np.array([LEVELS[c] if c >= 0 else "" for c in conf], object)
    for j, lvl in enumerate(LEVELS):
        e = top[:, j]
        out[lvl] = np.where(e >= 0, names[e.clip(0)], None)
        out[f"{lvl}_key"] = np.where(e >= 0, keys[e.clip(0)], None)
        # no probability beside an empty name (a level the place lacks, e.g. Namibia's
        # subregions): a figure next to a blank reads as a claim about nothing
        named = (e >= 0) & (names[e.clip(0)] != "")
        out[f"p_{lvl}"] = np.where(named, prob[:, 0, j], np.nan)
    depth = (pred.paths >= 0).sum(-1)                              # [n, k]
    deepest = np.take_along_axis(pred.paths, (depth - 1).clip(0)[..., None], 2)[..., 0]
    p_path = np.take_along_axis(prob, (depth - 1).clip(0)[..., None], 2)[..., 0]
    for r in range(max(k, topk or 0)):
        if r >= k:
            out[f"path_{r + 1}"], out[f"key_{r + 1}"] = np.full(n, None), np.full(n, None)
            out[f"p_{r + 1}"] = np.full(n, np.nan)
            continue
        has = (depth[:, r] > 0) & ((r == 0) | (p_path[:, r] >= PATH_FLOOR))
        out[f"path_{r + 1}"] = np.array([_readable(names, pred.paths[i, r]) if has[i] else None
                                         for i in range(n)], object)
        out[f"key_{r + 1}"] = np.where(has, keys[deepest[:, r].clip(0)], None)
        out[f"p_{r + 1}"] = np.where(has, p_path[:, r], np.nan)
    return pd.DataFrame(out)


def score_truth(table: pd.DataFrame, truth: pd.DataFrame, gz=None,
                geocoder: str = "gazetteer") -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Add the truth to a :func:`prediction_table`: ``true_latitude, true_longitude,
    error_km``, per level ``true_L_key`` and ``hit_L`` (OSV-5M's: the predicted point
    reverse-geocoded in ``osv5m`` mode and compared with the truth's key; <NA> where the
    truth has no key at that level, or no position). ``truth`` (same rows): ``latitude,
    longitude`` (NaN: unknown) and optionally OSV-5M's label columns, else its keys are the
    labels of its coordinates. ``geocoder``: ``gazetteer`` (``gz``, default the bundled
    world's, in its ``osv5m`` mode) or ``reverse_geocoder`` (the library), as the run's
    ``eval.geocoder``. Returns the table, OSV-5M's summary over the rows with a truth, and
    the per-country table (:func:`hiergeo.metrics.per_country`)."""
    from .. import metrics
    from ..metrics.osv5m import LEVEL_NAMES

    if gz is None:
        import gazetteer

        gz = gazetteer.load()
    has = truth["latitude"].notna().to_numpy() & truth["longitude"].notna().to_numpy()
    t = truth.loc[has].reset_index(drop=True)
    table = table.copy()
    table["true_latitude"] = truth["latitude"].to_numpy(float)
    table["true_longitude"] = truth["longitude"].to_numpy(float)
    coder = "reverse_geocoder" if geocoder == "reverse_geocoder" else gz
    t, _ = metrics.with_truth_keys(t, coder)
    sc = None
    if has.any():
        countries = gz.level("country")
        names = dict(zip(countries["key"], countries["name"], strict=True))
        sc = metrics.score_points(table["pred_latitude"].to_numpy()[has],
                                  table["pred_longitude"].to_numpy()[has], t, coder, names)
    km = np.full(len(table), np.nan)
    if sc is not None:
        km[has] = sc.km
    table["error_km"] = km
    for lvl in LEVELS:
        tk = np.full(len(table), None, object)
        hit = pd.array([pd.NA] * len(table), dtype="boolean")
        if sc is not None:
            tk[has] = sc.truth_keys[lvl].to_numpy(object)
            hit[np.flatnonzero(has)] = sc.hits[LEVEL_NAMES[lvl]].to_numpy()
        table[f"true_{lvl}_key"] = tk
        table[f"hit_{lvl}"] = hit
    if sc is None:
        return table, {"n": 0}, pd.DataFrame()
    return table, sc.summary, sc.per_country



def _plain(v):
    """A JSON value from a table cell (NaN and <NA> -> null, numpy scalars -> Python)."""
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return None
    if isinstance(v, np.generic):
        return _plain(v.item())
    return v


def geojson_features(table: pd.DataFrame, chunk: int = 10_000):
    """One GeoJSON Point feature per row at its predicted coordinates, every column a
    property (rows converted ``chunk`` at a time)."""
    for s in range(0, len(table), chunk):
        for rec in table.iloc[s:s + chunk].to_dict(orient="records"):
            props = {k: _plain(v) for k, v in rec.items()}
            yield {"type": "Feature", "geometry": {
                "type": "Point",
                "coordinates": [props["pred_longitude"], props["pred_latitude"]]},
                "properties": props}


#: A text cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "@", "\t", "\r")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every text cell that a spreadsheet would run as a formula (an id or a
    path such as ``=HYPERLINK(...)``) prefixed with ``'``, as OWASP advises; numbers are left
    alone. Only CSV needs it: Parquet and GeoJSON keep types."""
    out = table
    for col in table.columns:
        if not (table[col].dtype == object or pd.api.types.is_string_dtype(table[col])):
            continue
        text = table[col].map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS))
        if text.any():
            if out is table:
                out = table.copy()
            out[col] = table[col].where(~text, "'" + table[col].astype(str))
    return out


def _significant(v: float, digits: int) -> float:
    return v if not np.isfinite(v) or v == 0 else float(f"{v:.{digits}g}")


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as CSV and GeoJSON show it: probabilities (``p_*``) to :data:`P_DIGITS`
    significant digits (0.6213, 1.234e-05), coordinates (``*_latitude``, ``*_longitude``)
    to :data:`COORD_DECIMALS` decimals, ``error_km`` to :data:`KM_DECIMALS`."""
    out = table.copy()
    for col in table.columns:
        if not pd.api.types.is_float_dtype(table[col]):
            continue
        if col.startswith("p_"):
            out[col] = [_significant(v, P_DIGITS) for v in table[col].to_numpy(float)]
        elif col.endswith(("_latitude", "_longitude")):
            out[col] = table[col].round(COORD_DECIMALS)
        elif col == "error_km":
            out[col] = table[col].round(KM_DECIMALS)
    return out


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    """Write ``table`` as CSV, Parquet or GeoJSON by ``out``'s suffix (atomically); CSV and
    GeoJSON with the figures :func:`rounded`, Parquet with every digit."""
    from ..files import temporary_names

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise ValueError(f"{out}: the output's suffix must be one of {sorted(OUT_SUFFIXES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    plain = table.copy() if suffix == ".parquet" else rounded(table)
    plain.attrs = {}
    with temporary_names(out) as (tmp,):
        if suffix == ".geojson":  # a feature at a time: never the whole document as one string
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write('{"type": "FeatureCollection", "features": [')
                for i, feat in enumerate(geojson_features(plain)):
                    fh.write((",\n" if i else "\n") + json.dumps(feat, ensure_ascii=False,
                                                                allow_nan=False))
                fh.write("\n]}\n")
        elif suffix == ".csv":
            csv_safe(plain).to_csv(tmp, index=False, encoding="utf-8")
        else:
            plain.to_parquet(tmp, index=False)
        tmp.replace(out)
    return out


def sidecar_paths(first_output: Path) -> dict[str, Path]:
    """The files :func:`write_outputs` writes beside the first output, by what they hold."""
    base = Path(first_output).with_suffix("")
    return {"skipped": Path(f"{base}.skipped.csv"),
            "per_country_csv": Path(f"{base}.per_country.csv"),
            "per_country_md": Path(f"{base}.per_country.md")}


def write_outputs(table: pd.DataFrame, outs: list[Path]) -> None:
    """Write ``table`` to every path of ``outs`` (:func:`write_table`), and beside the first:
    ``<stem>.skipped.csv`` (``table.attrs["skipped"]``, when any) and
    ``<stem>.per_country.csv`` / ``.md`` (``table.attrs["per_country"]``, when any)."""
    for out in outs:
        write_table(table, out)
        log.info("wrote %s (%d rows)", out, len(table))
    side = sidecar_paths(outs[0])
    skipped = table.attrs.get("skipped")
    if skipped is not None and len(skipped):
        skipped.to_csv(side["skipped"], index=False)
        log.warning("%d photos skipped: %s lists them with the reason", len(skipped),
                    side["skipped"])
    per = table.attrs.get("per_country")
    if per is not None and len(per):
        from ..metrics import markdown_table

        per.to_csv(side["per_country_csv"], index=False)
        side["per_country_md"].write_text(markdown_table(per), encoding="utf-8")
