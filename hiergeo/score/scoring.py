"""One model's predictions scored OSV-5M's way: the same functions as ``hiergeo.evaluate``
(:func:`hiergeo.metrics.osv5m_summary`, :func:`~hiergeo.metrics.per_country`), so the
figures are the same value for value, plus calibration per level when the model gave
probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS

from .. import metrics
from ..metrics.osv5m import LEVEL_NAMES
from ..predict.calibration import reliability
from .read import Predictions


@dataclass
class Scored:
    """A model's figures on the joined rows.

    Attributes:
        name: the model's label.
        summary: OSV-5M's metrics (:func:`hiergeo.metrics.osv5m_summary`'s keys), plus
            ``key_acc_<level>`` where the model gave its own keys.
        per_country: :func:`hiergeo.metrics.per_country`'s table.
        rows: per row ``id, true_country, pred_country, km``, per level ``hit_<level>``
            (1.0, 0.0, NaN where the truth has no key): what comparisons resample.
        calibration: per level with probabilities,
            :func:`hiergeo.predict.calibration.reliability`'s report; empty if none.
        notes: what was read and guessed.
    """

    name: str
    summary: dict
    per_country: pd.DataFrame
    rows: pd.DataFrame
    calibration: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def truth_with_keys(truth: pd.DataFrame, geocoder) -> tuple[pd.DataFrame, str]:
    """``truth`` with OSV-5M key columns (:func:`hiergeo.metrics.with_truth_keys`)."""
    return metrics.with_truth_keys(truth, geocoder)


def score(pred: Predictions, truth: pd.DataFrame, geocoder, country_names: dict | None = None
          ) -> Scored:
    """Score ``pred`` against ``truth`` (the same rows in the same order, as
    :func:`hiergeo.score.read.join` leaves them; truth with key columns:
    :func:`truth_with_keys`). ``geocoder``: a :class:`gazetteer.Gazetteer` or
    ``"reverse_geocoder"``, as :func:`hiergeo.metrics.predicted_keys` takes it."""
    t = pred.table
    if not np.array_equal(t["id"].to_numpy(object), truth["id"].to_numpy(object)):
        raise ValueError(f"{pred.name}: rows are not aligned with the truth (join them first)")
    lat, lon = t["lat"].to_numpy(np.float64), t["lon"].to_numpy(np.float64)
    sc = metrics.score_points(lat, lon, truth, geocoder, country_names)
    pk, hits, summary, km, tkeys, per = (sc.keys, sc.hits, sc.summary, sc.km, sc.truth_keys,
                                         sc.per_country)
    rows = pd.DataFrame({"id": t["id"].to_numpy(object),
                         "true_country": tkeys["country"].fillna("").to_numpy(object),
                         "pred_country": pk["country"].to_numpy(object), "km": km})
    for lvl in LEVELS:
        rows[f"hit_{lvl}"] = hits[LEVEL_NAMES[lvl]].astype("Float64").to_numpy(
            np.float64, na_value=np.nan)
    calib = {}
    for lvl in LEVELS:
        truth_key = tkeys[lvl].to_numpy(object)
        present = ~pd.isna(truth_key)
        own = f"key_{lvl}" in t.columns
        if own:
            correct = t[f"key_{lvl}"].to_numpy(object) == truth_key
            n = int(present.sum())
            summary[f"key_acc_{lvl}"] = float(correct[present].mean()) if n else float("nan")
        else:
            correct = rows[f"hit_{lvl}"].to_numpy() == 1
        if f"p_{lvl}" in t.columns:
            rep = reliability(t[f"p_{lvl}"].to_numpy(np.float64)[present], correct[present])
            rep["correct_means"] = ("the model's own key is the truth's" if own else
                                    "OSV-5M's hit (the predicted point reverse-geocoded)")
            calib[lvl] = rep
    return Scored(pred.name, summary, per, rows, calib, list(pred.notes))
