"""Entity ids for a labelled dataset, at all four levels.

Sources, in order of preference: OSV-5M's ``unique_*`` key columns; its part columns
(``country, region, sub-region, city``) joined into keys; otherwise the gazetteer labels the
coordinates. OSV-5M writes a missing part as NaN (read back as "nan") and its metric code as an
empty string: both become the empty part, so they name the same placeholder entity. The
string "None" as a part is the Piedmont town of that name, never a missing part. A key the
gazetteer does not know is <NA> and counted, never guessed.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from gazetteer.keys import (
    LEVELS,
    MISSING_PART_SPELLINGS,
    MISSING_SPELLINGS,
    OSV5M_KEY_COLUMNS,
    OSV5M_PART_COLUMNS,
    clean_part,
    make_keys,
)

log = logging.getLogger(__name__)


def _clean_key(values: pd.Series) -> pd.Series:
    """A whole key: missing spellings (``"None"`` included) -> <NA>; parts spelled "nan" ->
    empty parts, while a part "None" stays: it is a town (``None_..._Piedmont_IT``)."""
    s = values.astype("object").where(values.notna(), "").astype(str).str.strip()
    missing = s.isin(MISSING_SPELLINGS)
    parts = s.str.split("_")
    fixed = parts.map(lambda ps: "_".join("" if p in MISSING_PART_SPELLINGS else p for p in ps))
    return fixed.where(~missing, None)


def dataset_keys(df: pd.DataFrame) -> pd.DataFrame | None:
    """Keys per level from OSV-5M columns, or None when the table has neither kind."""
    if all(c in df.columns for c in OSV5M_KEY_COLUMNS.values()):
        return pd.DataFrame({lvl: _clean_key(df[col]) for lvl, col in OSV5M_KEY_COLUMNS.items()})
    if all(c in df.columns for c in OSV5M_PART_COLUMNS.values()):
        parts = {lvl: clean_part(df[col]) for lvl, col in OSV5M_PART_COLUMNS.items()}
        keys = make_keys(parts["country"], parts["region"], parts["subregion"], parts["city"])
        no_country = parts["country"] == ""
        return pd.DataFrame({lvl: keys[lvl].where(~no_country, None) for lvl in LEVELS})
    return None


def entity_ids(gz, df: pd.DataFrame, *, mode: str = "osv5m") -> tuple[pd.DataFrame, dict]:
    """``[len(df), 4]`` nullable ids (``country_id ... city_id``) and a report.

    The report counts, per level, rows whose key is missing in the data and rows whose key is
    not an entity of ``gz``; ``source`` says where the labels came from.
    """
    keys = dataset_keys(df)
    report: dict = {"rows": len(df)}
    if keys is None:
        lab = gz.label(df["latitude"].to_numpy(float), df["longitude"].to_numpy(float),
                       mode=mode, on_invalid="mask")
        report["source"] = f"gazetteer.label(mode={mode!r})"
        ids = lab[[f"{lvl}_id" for lvl in LEVELS]].reset_index(drop=True)
        for lvl in LEVELS:
            report[lvl] = {"missing": int(ids[f"{lvl}_id"].isna().sum()), "unknown": 0}
        return ids, report
    report["source"] = "dataset columns"
    depth = gz.entities["depth"].to_numpy()
    out = {}
    for j, lvl in enumerate(LEVELS):
        # only this level's entities: a key of another level (the tree's "<root>" as a
        # country, a region's key in the country column) is unknown here, not a label
        at = depth == j + 1
        index = pd.Series(gz.entities["id"].to_numpy()[at],
                          index=gz.entities["key"].to_numpy()[at])
        k = keys[lvl]
        present = k.notna().to_numpy()
        looked_up = index.reindex(k.fillna("\x00").to_numpy()).to_numpy()  # NaN if unknown
        found = pd.array(np.where(present, looked_up, np.nan), dtype="Int64")
        not_found = present & np.isnan(looked_up.astype(float))
        unknown = int(not_found.sum())
        report[lvl] = {"missing": int((~present).sum()), "unknown": unknown}
        if unknown:
            examples = k[not_found].unique()[:3].tolist()
            log.warning("%d rows have a %s the gazetteer does not know (e.g. %s)", unknown, lvl,
                        examples)
        out[f"{lvl}_id"] = found
    return pd.DataFrame(out), report
