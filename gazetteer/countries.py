"""ISO 3166 names and alpha-3 codes for GeoNames country codes (pycountry)."""

from __future__ import annotations

from functools import cache

import pandas as pd
import pycountry

# GeoNames codes that pycountry's current list lacks. XK (Kosovo) and XKX are user-assigned
# codes in common use (the EU, the IMF); AN (Netherlands Antilles) was withdrawn in 2010.
_EXTRA = {"XK": ("XKX", "Kosovo")}


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


def country_info(codes: pd.Series) -> pd.DataFrame:
    """``iso3`` and English ``name`` per alpha-2 code; <NA> where the code is unknown."""
    uniq = pd.unique(codes.fillna(""))
    table = {cc: _lookup(cc) for cc in uniq}
    iso3 = codes.fillna("").map(lambda cc: table[cc][0])
    name = codes.fillna("").map(lambda cc: table[cc][1])
    return pd.DataFrame({"iso3": iso3.astype("string"), "name": name.astype("string")})
