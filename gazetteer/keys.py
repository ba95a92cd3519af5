"""Levels and OSV-5M entity keys.

OSV-5M keys a place by joining GeoNames fields with ``_``::

    country   = cc
    region    = admin1_cc
    subregion = admin2_admin1_cc
    city      = name_admin2_admin1_cc

A missing admin1 or admin2 is an empty part, so ``_Rheinland-Pfalz_DE`` is the subregion of a
place in Rheinland-Pfalz with no admin2: exactly what OSV-5M's metric code builds from
``reverse_geocoder`` output for such a place.
"""

from __future__ import annotations

import pandas as pd

#: The four levels below the root, coarse to fine.
LEVELS: tuple[str, ...] = ("country", "region", "subregion", "city")
#: Depth of each level in the tree (root = 0).
DEPTH: dict[str, int] = {"root": 0, **{name: i + 1 for i, name in enumerate(LEVELS)}}
ROOT_KEY = "<root>"

#: OSV-5M's CSV columns holding each level's own part, and its ``unique_*`` key columns.
OSV5M_PART_COLUMNS: dict[str, str] = {
    "country": "country",
    "region": "region",
    "subregion": "sub-region",
    "city": "city",
}
OSV5M_KEY_COLUMNS: dict[str, str] = {
    lvl: f"unique_{col}" for lvl, col in OSV5M_PART_COLUMNS.items()
}

#: Spellings of a missing *whole value* (a key, or a cell that is not a place name): NaN written
#: out by OSV-5M's CSVs (read back as "nan"), "" in its metric code, and what ``str()`` makes
#: of NaN, None and pd.NA. A whole key can never be a real name, so "None" is safe here.
MISSING_SPELLINGS = frozenset({"", "nan", "NaN", "None", "<NA>"})
#: Spellings of a missing *part* (a name, admin1, admin2): as above, but not "None": GeoNames
#: has a town called None (Piedmont, IT), and ``reverse_geocoder`` answers it by that name.
MISSING_PART_SPELLINGS = MISSING_SPELLINGS - {"None"}


def clean_part(values: pd.Series, missing: frozenset[str] = MISSING_PART_SPELLINGS
               ) -> pd.Series:
    """A key part as plain strings, with NaN/None objects and every spelling in ``missing``
    turned into ``""``.

    The default, :data:`MISSING_PART_SPELLINGS`, suits a labelled dataset (OSV-5M writes a
    missing part as NaN, read back as "nan"); the string "None" is kept, since it is a real
    place name. A GeoNames table needs ``missing=frozenset({""})``: there every other string
    is a name.
    """
    s = values.astype("object").where(values.notna(), "")
    s = s.astype(str).str.strip()
    return s.where(~s.isin(missing), "")


def make_keys(cc: pd.Series, admin1: pd.Series, admin2: pd.Series, name: pd.Series) -> dict:
    """Keys of all four levels for aligned part columns (already cleaned)."""
    region = admin1 + "_" + cc
    subregion = admin2 + "_" + region
    city = name + "_" + subregion
    return {"country": cc, "region": region, "subregion": subregion, "city": city}
