"""ISO 3166 names, alpha-3 codes and continents for GeoNames country codes (pycountry,
pycountry-convert-ng)."""

from __future__ import annotations

from functools import cache

import pandas as pd
import pycountry
from pycountry_convert import (
    convert_continent_code_to_continent_name,
    country_alpha2_to_continent_code,
)

# GeoNames codes that pycountry's current list lacks. XK (Kosovo) and XKX are user-assigned
# codes in common use (the EU, the IMF); AN (Netherlands Antilles) was withdrawn in 2010.
_EXTRA = {"XK": ("XKX", "Kosovo")}
# Codes the continent table lacks (territories, withdrawn codes).
_EXTRA_CONTINENT = {
    "XK": "Europe", "AQ": "Antarctica", "AN": "North America", "CW": "North America",
    "SX": "North America", "BQ": "North America", "EH": "Africa", "TL": "Asia",
    "UM": "Oceania", "VA": "Europe", "PN": "Oceania", "TF": "Antarctica",
}


@cache
def _lookup(cc: str) -> tuple[str | None, str | None]:
    if not cc:
        return None, None
    if cc in _EXTRA:
        return _EXTRA[cc]
    c = pycountry.countries.get(alpha_2=cc)
    if c is None:
        c = pycountry.historic_countries.get(alpha_2=cc)
    if c is None:
        return None, None
    return c.alpha_3, getattr(c, "common_name", None) or c.name


@cache
def continent(cc: str) -> str | None:
    """Continent name of an alpha-2 code (Europe, Asia, Africa, North America, South America,
    Oceania, Antarctica), None if unknown."""
    if not cc:
        return None
    if cc in _EXTRA_CONTINENT:
        return _EXTRA_CONTINENT[cc]
    try:
        return convert_continent_code_to_continent_name(country_alpha2_to_continent_code(cc))
    except KeyError:
        return None


def country_info(codes: pd.Series) -> pd.DataFrame:
    """``iso3``, English ``name`` and ``continent`` per alpha-2 code; <NA> where unknown."""
    codes = codes.fillna("")
    uniq = pd.unique(codes)
    table = {cc: (*_lookup(cc), continent(cc)) for cc in uniq}
    cols = {col: codes.map(lambda cc, j=j: table[cc][j]).astype("string")
            for j, col in enumerate(("iso3", "name", "continent"))}
    return pd.DataFrame(cols)
