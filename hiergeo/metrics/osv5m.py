"""OSV-5M's metrics, value for value, with degrees at the interface.

What OSV-5M's published evaluation computes, and what we match (the tests check each item on
hand-made cases in tests/test_metrics.py):

- distance: haversine on radians, ``2 * 6371 * arctan2(sqrt(a), sqrt(1 - a))`` km;
- GeoScore (``Geoguessr`` there): ``5000 * exp(-km / 1492.7)``, averaged;
- accuracy within 1, 25, 200, 750, 2500 km: the share with ``km < radius`` (strictly less);
- country / region / sub-region / city accuracy: reverse-geocode the *predicted* point with
  ``reverse_geocoder`` (GeoNames places > 1000 people), build keys ``cc``, ``admin1_cc``,
  ``admin2_admin1_cc``, ``name_admin2_admin1_cc`` and compare them as strings with the truth's
  ``unique_*`` columns; rows whose truth key is missing (the string ``"nan"``) are left out of
  that level's count.

We reverse-geocode with the gazetteer's ``osv5m`` mode, which returns reverse_geocoder's own
answer, ties included, faster (agreement and speed: results/benchmarks/README.md#gazetteer);
``geocoder="reverse_geocoder"`` calls the library itself.

Differences, on inputs where the official code has no sensible answer: we clip the haversine
term ``a`` to [0, 1] (rounding can push it past 1 for near-antipodal points, where the official
code returns NaN), and we also mask truth keys that are NaN/None/empty, not only ``"nan"``.
A *part* spelled ``"None"`` (truth built from part columns) is not masked: it is a town in
Piedmont, which ``reverse_geocoder`` names so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gazetteer import geo
from gazetteer.keys import (
    LEVELS,
    MISSING_SPELLINGS,
    OSV5M_KEY_COLUMNS,
    OSV5M_PART_COLUMNS,
    clean_part,
    make_keys,
)

GEOSCORE_SCALE_KM = 1492.7
THRESHOLDS_KM = (1, 25, 200, 750, 2500)
#: OSV-5M's name of each level (the columns of :func:`osv5m_hits`).
LEVEL_NAMES = {lvl: OSV5M_PART_COLUMNS[lvl] for lvl in LEVELS}


def check_predictions(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """Predicted coordinates as float64 arrays; NaN or infinite ones raise, naming rows."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise ValueError(f"{len(lat)} latitudes but {len(lon)} longitudes")
    bad = ~(np.isfinite(lat) & np.isfinite(lon))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{len(rows)} predicted coordinates are NaN or infinite (rows "
                         f"{rows[:5].tolist()}{'...' if len(rows) > 5 else ''}); a metric over "
                         "them would be meaningless: drop or fix those rows first")
    return lat, lon


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle km between points in degrees, OSV-5M's formula (radius 6371 km): the
    project's one haversine, :func:`gazetteer.geo.haversine_km`."""
    return geo.haversine_km(lat1, lon1, lat2, lon2)


def geoscore(km) -> np.ndarray:
    """GeoGuessr-style score, ``5000 * exp(-km / 1492.7)`` (5000 at 0 km)."""
    return 5000 * np.exp(-np.asarray(km, np.float64) / GEOSCORE_SCALE_KM)


def truth_keys(truth: pd.DataFrame) -> pd.DataFrame:
    """Truth keys per level (object strings, None where missing) from OSV-5M's ``unique_*``
    columns, or built from its part columns (``country, region, sub-region, city``)."""
    if all(c in truth.columns for c in OSV5M_KEY_COLUMNS.values()):
        out = {}
        for lvl, col in OSV5M_KEY_COLUMNS.items():
            s = truth[col].astype("object")
            s = s.where(s.notna(), None)
            s = s.map(lambda v: None if v is None or str(v).strip() in MISSING_SPELLINGS
                      else str(v))
            out[lvl] = s.to_numpy(object)
        return pd.DataFrame(out, index=truth.index)
    if all(c in truth.columns for c in OSV5M_PART_COLUMNS.values()):
        parts = {lvl: clean_part(truth[col]) for lvl, col in OSV5M_PART_COLUMNS.items()}
        keys = make_keys(parts["country"], parts["region"], parts["subregion"], parts["city"])
        out = {}
        for lvl in LEVELS:
            k = keys[lvl].to_numpy(object)
            k[(parts[lvl] == "").to_numpy()] = None  # a level is missing where its own part is
            out[lvl] = k
        return pd.DataFrame(out, index=truth.index)
    raise ValueError("truth needs OSV-5M's key columns "
                     f"{list(OSV5M_KEY_COLUMNS.values())} or part columns "
                     f"{list(OSV5M_PART_COLUMNS.values())}; it has {list(truth.columns)}")


def predicted_keys(lat, lon, geocoder=None) -> pd.DataFrame:
    """Keys per level of the places OSV-5M's reverse geocoding gives for points.

    ``geocoder``: None (the bundled world gazetteer, ``osv5m`` mode), a
    :class:`gazetteer.Gazetteer`, or ``"reverse_geocoder"`` (the library itself; slower).
    """
    lat, lon = check_predictions(lat, lon)
    if isinstance(geocoder, str):
        if geocoder != "reverse_geocoder":
            raise ValueError(f"geocoder must be None, a Gazetteer or 'reverse_geocoder', "
                             f"not {geocoder!r}")
        import reverse_geocoder

        if len(lat) == 0:
            return pd.DataFrame({lvl: np.zeros(0, object) for lvl in LEVELS})
        res = reverse_geocoder.search(list(zip(lat.tolist(), lon.tolist(), strict=True)),
                                      verbose=False)
        part = {f: pd.Series([r.get(f, "") for r in res], dtype=object)
                for f in ("cc", "admin1", "admin2", "name")}
        keys = make_keys(part["cc"], part["admin1"], part["admin2"], part["name"])
        return pd.DataFrame({lvl: keys[lvl].to_numpy(object) for lvl in LEVELS})
    if geocoder is None:
        import gazetteer

        geocoder = gazetteer.load()
    lab = geocoder.label(lat, lon, mode="osv5m")
    return pd.DataFrame({lvl: lab[lvl].astype(str).to_numpy(object) for lvl in LEVELS})


def osv5m_hits(pred_lat, pred_lon, truth: pd.DataFrame, *, geocoder=None) -> pd.DataFrame:
    """Per row and level, whether the predicted point reverse-geocodes to the true key.

    Returns a DataFrame with OSV-5M's level names ``country, region, sub-region, city``
    (nullable booleans), <NA> where the truth is missing at that level, index as ``truth``.
    """
    pred_lat, pred_lon = check_predictions(pred_lat, pred_lon)
    if len(truth) != len(pred_lat):
        raise ValueError(f"{len(pred_lat)} predictions for {len(truth)} truth rows")
    return hits_from_keys(predicted_keys(pred_lat, pred_lon, geocoder), truth)


def hits_from_keys(pred_keys: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """:func:`osv5m_hits` from already geocoded keys (``predicted_keys``)."""
    if len(truth) != len(pred_keys):
        raise ValueError(f"{len(pred_keys)} predictions for {len(truth)} truth rows")
    t = truth_keys(truth)
    out = {}
    for lvl in LEVELS:
        tv = t[lvl].to_numpy(object)
        present = ~pd.isna(tv)
        hit = np.asarray(pred_keys[lvl].to_numpy(object) == tv, dtype=bool)
        col = pd.array(hit, dtype="boolean")
        col[~present] = pd.NA
        out[LEVEL_NAMES[lvl]] = col
    return pd.DataFrame(out, index=truth.index)


def osv5m_summary(pred_lat, pred_lon, truth: pd.DataFrame, *, geocoder=None,
                  hits: pd.DataFrame | None = None) -> dict:
    """Every OSV-5M metric for predictions against truth (``latitude``/``longitude`` columns,
    degrees, plus the key or part columns).

    Keys: ``n``; ``mean_km`` (OSV-5M's ``Haversine``), ``median_km``; ``geoscore``
    (``Geoguessr``); ``acc_1km`` ... ``acc_2500km`` (``Accuracy_<r>_km_radius``);
    ``acc_country`` ... ``acc_city`` (``Accuracy_<level>``) with ``n_country`` ... the rows
    counted at each level. Pass ``hits`` from :func:`osv5m_hits` to avoid geocoding twice.
    """
    pred_lat, pred_lon = check_predictions(pred_lat, pred_lon)
    for col in ("latitude", "longitude"):
        if col not in truth.columns:
            raise ValueError(f"truth needs a {col!r} column (degrees)")
    tlat, tlon = check_predictions(truth["latitude"], truth["longitude"])
    if len(tlat) != len(pred_lat):
        raise ValueError(f"{len(pred_lat)} predictions for {len(truth)} truth rows")
    if len(tlat) == 0:
        raise ValueError("no rows to evaluate")
    km = haversine_km(pred_lat, pred_lon, tlat, tlon)
    out: dict = {"n": int(len(km)), "mean_km": float(km.mean()),
                 "median_km": float(np.median(km)), "geoscore": float(geoscore(km).mean())}
    for r in THRESHOLDS_KM:
        out[f"acc_{r}km"] = float((km < r).mean())
    if hits is None:
        hits = osv5m_hits(pred_lat, pred_lon, truth, geocoder=geocoder)
    for lvl in LEVELS:
        col = hits[LEVEL_NAMES[lvl]]
        n = int(col.notna().sum())
        out[f"n_{lvl}"] = n
        out[f"acc_{lvl}"] = float(col.sum() / n) if n else float("nan")
    return out
