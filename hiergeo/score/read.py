"""Reading any model's predictions and a truth table: columns guessed from common spellings,
peers' layouts recognised, units checked, ids joined. Every refusal is a
:class:`ScoreInputError` whose message names the file, the rows and the fix.

Layouts read (one answer per id is scored: the best one):

- one row per id: ``id, lat, lon`` (or ``latitude, longitude``, ``pred_latitude,
  pred_longitude``, ...), as OSV-5M's baseline script, hiergeo's own prediction tables and
  most APIs (``image, latitude, longitude, confidence``) write;
- GeoCLIP-style top-k in columns: ``lat_1, lon_1, lat_2, lon_2, ...`` with optional
  ``p_1, p_2, ...`` (or ``prob_1``): rank 1 is scored;
- top-k in rows: a ``rank`` column (``rank``, ``k``, ``top``): the lowest rank is scored;
- samples (PLONK-style: several rows per id, no rank): refused as duplicated ids unless
  ``samples="first"`` (the first row of each id, in file order) or ``samples="medoid"`` (the
  sample with the smallest summed great-circle distance to the id's others: the most central
  guess, a mode for continuous coordinates that is itself one of the samples).

Optional columns: per-level keys (``country_key``, ``pred_country``, ``unique_country``, ...:
OSV-5M ``unique_*`` keys; ISO codes for the country) and per-level probabilities (``p_country``,
``prob_country``, ...), or one ``confidence`` / ``probability`` / ``p_1`` for a level chosen
by the caller.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".parquet", ".geojson", ".json")
ID_NAMES = ("id", "image_id", "img_id", "photo_id", "image", "img", "photo", "file",
            "filename", "file_name", "path", "name", "key", "uid")
# predicted columns first: a prediction table may carry the truth's ``latitude`` beside them
LAT_NAMES = ("pred_lat", "pred_latitude", "lat_pred", "latitude_pred", "predicted_lat",
             "predicted_latitude", "lat", "latitude", "y")
LON_NAMES = ("pred_lon", "pred_lng", "pred_longitude", "lon_pred", "longitude_pred",
             "predicted_lon", "predicted_longitude", "lon", "lng", "long", "longitude", "x")
TRUTH_LAT = ("latitude", "lat", "true_latitude", "true_lat", "gt_lat", "lat_gt")
TRUTH_LON = ("longitude", "lon", "lng", "true_longitude", "true_lon", "gt_lon", "lon_gt")
RANK_NAMES = ("rank", "k", "top", "topk_rank")
CONFIDENCE_NAMES = ("confidence", "probability", "prob", "score", "p_1", "prob_1", "p")
SAMPLES = ("first", "medoid")
UNITS = ("auto", "degrees", "radians")


class ScoreInputError(ValueError):
    """Input that cannot be scored as it is; the message names the problem and the fix."""


@dataclass
class Predictions:
    """One model's answers, one row per id: ``table`` with ``id`` (str), ``lat, lon``
    (degrees), optional ``key_<level>`` and ``p_<level>``; ``name`` the model's label;
    ``notes`` what was read and guessed (shown to the user)."""

    name: str
    table: pd.DataFrame
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def probabilities(self) -> list[str]:
        return [lvl for lvl in LEVELS if f"p_{lvl}" in self.table.columns]


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, Parquet or GeoJSON file as a DataFrame (a GeoJSON feature's properties as
    columns, its Point as ``longitude, latitude`` when those are not properties). Codes stay
    strings: ``NA`` is Namibia, not missing."""
    path = Path(path)
    if not path.exists():
        raise ScoreInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ScoreInputError(f"{path}: unknown format {suffix!r}; give a .csv, .parquet or "
                              ".geojson file")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = _read_geojson(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, ScoreInputError):
            raise
        raise ScoreInputError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from exc
    if not len(df):
        raise ScoreInputError(f"{path}: the file has no rows")
    df.columns = [str(c) for c in df.columns]
    return df


def _read_geojson(path: Path) -> pd.DataFrame:
    doc = json.loads(path.read_text(encoding="utf-8"))
    feats = doc.get("features") if isinstance(doc, dict) else None
    if feats is None:
        raise ScoreInputError(f"{path}: not a GeoJSON FeatureCollection")
    rows = []
    for f in feats:
        row = dict(f.get("properties") or {})
        geom = f.get("geometry") or {}
        if geom.get("type") == "Point":
            lon, lat = geom["coordinates"][:2]
            row.setdefault("_point_lat", lat)
            row.setdefault("_point_lon", lon)
        rows.append(row)
    return pd.DataFrame(rows)


def _find(columns, names, what: str, path, given: str | None = None) -> str:
    """The column ``given`` (checked), else the first of ``names`` present (any case)."""
    lower = {c.lower(): c for c in columns}
    if given:
        if given not in columns:
            raise ScoreInputError(f"{path}: no column {given!r} for the {what}; columns are "
                                  f"{list(columns)}")
        return given
    for n in names:
        if n in lower:
            return lower[n]
    raise ScoreInputError(f"{path}: no {what} column found (looked for {', '.join(names[:6])}"
                          f", ...); name it with --{what.replace(' ', '-')}-column. Columns "
                          f"are {list(columns)}")


def _numbers(s: pd.Series, what: str, path) -> np.ndarray:
    """Floats; cells that are not numbers raise, naming rows."""
    s = s.replace("", np.nan) if s.dtype == object else s
    v = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise ScoreInputError(
            f"{path}: {len(bad)} rows have no valid {what} (rows {_rows(bad)}, e.g. "
            f"{s.iloc[bad[0]]!r}); fix or remove them: a metric over them would be meaningless")
    return v


def _rows(idx, k: int = 5) -> str:
    """Row numbers as a person counts them in the file (2 = the first data row of a CSV)."""
    idx = list(idx)
    return ", ".join(str(int(i) + 2) for i in idx[:k]) + (" ..." if len(idx) > k else "")


def _ids(s: pd.Series) -> pd.Series:
    """Ids as strings; integers stored as floats (``12.0``) are written ``12``."""
    if pd.api.types.is_float_dtype(s):
        whole = s.dropna() == s.dropna().round()
        if whole.all():
            return s.map(lambda v: str(int(v)) if pd.notna(v) else "").astype(str)
    return s.astype(str).str.strip()


def _wide_topk(df: pd.DataFrame) -> tuple[str, str, str | None] | None:
    """GeoCLIP-style ``lat_1, lon_1, ...``: the rank-1 columns and its probability."""
    lower = {c.lower(): c for c in df.columns}
    for la, lo in (("lat_1", "lon_1"), ("lat1", "lon1"), ("latitude_1", "longitude_1"),
                   ("pred_lat_1", "pred_lon_1"), ("lat_0", "lon_0")):
        if la in lower and lo in lower:
            r = la.rsplit("_", 1)[-1] if "_" in la else la[-1]
            p = next((lower[c] for c in (f"p_{r}", f"prob_{r}", f"p{r}", f"probability_{r}")
                      if c in lower), None)
            return lower[la], lower[lo], p
    return None


def _medoid(lat: np.ndarray, lon: np.ndarray) -> int:
    from gazetteer.geo import haversine_km

    d = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    return int(d.sum(1).argmin())


def _one_per_id(df: pd.DataFrame, id_col: str, rank_col: str | None, samples: str | None,
                path) -> tuple[pd.DataFrame, str | None]:
    """One row per id: the lowest rank, or a sample by ``samples``; duplicates refused."""
    dup = df[id_col].duplicated(keep=False)
    if not dup.any():
        return df, None
    if rank_col is not None:
        rank = _numbers(df[rank_col], "rank", path)
        order = np.lexsort((np.arange(len(df)), rank))
        best = df.iloc[order].drop_duplicates(id_col, keep="first")
        return best.sort_index(), f"top-k in rows: the lowest {rank_col!r} of each id"
    if samples is None:
        ids = df.loc[dup, id_col]
        first = ids.iloc[0]
        where = np.flatnonzero((df[id_col] == first).to_numpy())
        raise ScoreInputError(
            f"{path}: {ids.nunique()} ids appear more than once (e.g. {first!r} on rows "
            f"{_rows(where)}); if they are one model's samples (PLONK-style) pass --samples "
            "first or --samples medoid; if a ranked top-k, add a rank column; otherwise "
            "remove the duplicates")
    if samples not in SAMPLES:
        raise ScoreInputError(f"samples must be one of {SAMPLES}, not {samples!r}")
    if samples == "first":
        return (df.drop_duplicates(id_col, keep="first"),
                "several rows per id: the first of each (--samples first)")
    keep = []
    for _, idx in df.groupby(id_col, sort=False).indices.items():
        if len(idx) == 1:
            keep.append(idx[0])
            continue
        sub = df.iloc[idx]
        keep.append(idx[_medoid(sub["_lat"].to_numpy(), sub["_lon"].to_numpy())])
    return (df.iloc[np.sort(keep)],
            "several rows per id: the medoid sample of each (--samples medoid)")


def _level_columns(df: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """Per level, the column of predicted keys and of probabilities, where present."""
    lower = {c.lower(): c for c in df.columns}
    keys, probs = {}, {}
    for lvl in LEVELS:
        part = OSV5M_PART_COLUMNS[lvl]
        for c in (f"{lvl}_key", f"pred_{lvl}_key", f"pred_{lvl}", f"unique_{part}",
                  f"pred_unique_{part}", f"key_{lvl}"):
            if c in lower:
                keys[lvl] = lower[c]
                break
        for c in (f"p_{lvl}", f"prob_{lvl}", f"probability_{lvl}", f"{lvl}_prob",
                  f"{lvl}_probability", f"confidence_{lvl}", f"{lvl}_confidence"):
            if c in lower:
                probs[lvl] = lower[c]
                break
    return keys, probs


def read_predictions(path: str | Path, *, name: str | None = None, id_column=None,
                     lat_column=None, lon_column=None, samples: str | None = None,
                     confidence_level: str = "country") -> Predictions:
    """One model's predictions from ``path`` (see the module docstring), coordinates as given
    (units are checked against the truth by :func:`check_units`)."""
    path = Path(path)
    df = read_table(path).reset_index(drop=True)
    notes = []
    wide = None if (lat_column or lon_column) else _wide_topk(df)
    if wide is not None:
        lat_c, lon_c, p_c = wide
        notes.append(f"top-k in columns: rank 1 ({lat_c}, {lon_c}) scored")
    else:
        lat_c = _find(df.columns, LAT_NAMES + ("_point_lat",), "latitude", path, lat_column)
        lon_c = _find(df.columns, LON_NAMES + ("_point_lon",), "longitude", path, lon_column)
        p_c = None
    id_c = _find(df.columns, ID_NAMES, "id", path, id_column)
    ids = _ids(df[id_c])
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise ScoreInputError(f"{path}: {len(empty)} rows have an empty {id_c!r} (rows "
                              f"{_rows(empty)}); every prediction needs the id of its photo")
    df = df.assign(**{id_c: ids})
    df["_lat"] = _numbers(df[lat_c], "latitude", path)
    df["_lon"] = _numbers(df[lon_c], "longitude", path)
    lower = {c.lower(): c for c in df.columns}
    rank_c = next((lower[r] for r in RANK_NAMES if r in lower), None)
    df, how = _one_per_id(df, id_c, rank_c, samples, path)
    if how:
        notes.append(how)
    out = pd.DataFrame({"id": df[id_c].to_numpy(object), "lat": df["_lat"].to_numpy(),
                        "lon": df["_lon"].to_numpy()})
    keys, probs = _level_columns(df)
    for lvl, c in keys.items():
        v = df[c].astype(object).where(df[c].notna(), None).to_numpy(object)
        out[f"key_{lvl}"] = [None if x is None or str(x).strip() in ("", "nan", "None")
                             else str(x) for x in v]
    if not probs:
        conf = p_c or next((lower[c] for c in CONFIDENCE_NAMES if c in lower), None)
        if conf is not None:
            if confidence_level not in LEVELS:
                raise ScoreInputError(f"confidence_level must be one of {LEVELS}, not "
                                      f"{confidence_level!r}")
            probs = {confidence_level: conf}
            notes.append(f"{conf!r} read as the probability that the {confidence_level} is "
                         "right")
    for lvl, c in probs.items():
        p = pd.to_numeric(df[c].replace("", np.nan) if df[c].dtype == object else df[c],
                          errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(np.isfinite(p) & ((p < 0) | (p > 1)))
        if len(bad):
            raise ScoreInputError(f"{path}: {c!r} has values outside [0, 1] (rows "
                                  f"{_rows(bad)}, e.g. {p[bad[0]]}); probabilities are "
                                  "needed, not scores or percentages")
        out[f"p_{lvl}"] = p
    notes.insert(0, f"columns: id {id_c!r}, latitude {lat_c!r}, longitude {lon_c!r}"
                 + (f", keys {sorted(keys)}" if keys else "")
                 + (f", probabilities {sorted(probs)}" if probs else ""))
    return Predictions(name or path.stem, out, str(path), notes)


def read_truth(path: str | Path, *, id_column=None) -> pd.DataFrame:
    """The truth: ``id`` (str), ``latitude, longitude`` (degrees) and OSV-5M's key or part
    columns when the file has them (else :func:`hiergeo.score.scoring.truth_with_keys`
    labels the coordinates with the gazetteer's ``osv5m`` mode, as OSV-5M did)."""
    df = read_table(path).reset_index(drop=True)
    id_c = _find(df.columns, ID_NAMES, "id", path, id_column)
    lat_c = _find(df.columns, TRUTH_LAT, "latitude", path)
    lon_c = _find(df.columns, TRUTH_LON, "longitude", path)
    out = pd.DataFrame({"id": _ids(df[id_c]).to_numpy(object),
                        "latitude": _numbers(df[lat_c], "latitude", path),
                        "longitude": _numbers(df[lon_c], "longitude", path)})
    for cols in (OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS):
        if all(c in df.columns for c in cols.values()):
            for c in cols.values():
                out[c] = df[c].astype(object).where(df[c].notna(), None).to_numpy(object)
            break
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        first = out.loc[dup, "id"].iloc[0]
        raise ScoreInputError(f"{path}: {out.loc[dup, 'id'].nunique()} ids appear more than "
                              f"once in the truth (e.g. {first!r} on rows "
                              f"{_rows(np.flatnonzero((out['id'] == first).to_numpy()))}); a "
                              "photo has one true position: remove the duplicates")
    check_range(out["latitude"].to_numpy(), out["longitude"].to_numpy(), path)
    return out


def check_range(lat: np.ndarray, lon: np.ndarray, path, what: str = "coordinates") -> None:
    """Degrees in range, else a message naming rows and values."""
    bad = np.flatnonzero((np.abs(lat) > 90) | (np.abs(lon) > 180))
    if len(bad):
        i = bad[0]
        raise ScoreInputError(
            f"{path}: {len(bad)} {what} out of range (rows {_rows(bad)}, e.g. latitude "
            f"{lat[i]}, longitude {lon[i]}); latitude must be within [-90, 90] and longitude "
            "[-180, 180] degrees: are latitude and longitude swapped, or in another unit?")


#: ``--units auto`` converts radians only when reading them as radians cuts the median error
#: at least this many times (a weak model's degrees near (0, 0) must not pass for radians)
RADIANS_EVIDENCE = 10.0


def check_units(pred: Predictions, truth: pd.DataFrame, units: str = "auto") -> Predictions:
    """``pred`` in degrees. ``units``: ``degrees`` (as given), ``radians`` (converted) or
    ``auto``: coordinates that all fit radians' ranges, scored on a truth that does not, are
    converted (with a warning) when reading them as radians makes the median great-circle
    error over the joined rows at least :data:`RADIANS_EVIDENCE` times smaller; when the
    evidence is weaker they are refused, asking for ``--units``. Out-of-range degrees are
    refused."""
    if units not in UNITS:
        raise ScoreInputError(f"units must be one of {UNITS}, not {units!r}")
    t = pred.table
    lat, lon = t["lat"].to_numpy(), t["lon"].to_numpy()
    if units == "auto":
        units = _guess_units(pred, truth, lat, lon)
    elif units == "radians":
        pred.notes.append("radians converted to degrees (--units radians)")
    if units == "radians":
        t = t.assign(lat=np.degrees(lat), lon=np.degrees(lon))
    check_range(t["lat"].to_numpy(), t["lon"].to_numpy(), pred.source or pred.name,
                "predicted coordinates")
    return Predictions(pred.name, t, pred.source, pred.notes)


def _fits_radians(lat, lon) -> bool:
    return bool((np.abs(lat) <= np.pi / 2).all() and (np.abs(lon) <= np.pi).all())


def _guess_units(pred: Predictions, truth: pd.DataFrame, lat, lon) -> str:
    """``degrees`` or ``radians`` for ``--units auto`` (see :func:`check_units`)."""
    from gazetteer.geo import haversine_km

    where = pred.source or pred.name
    if _fits_radians(truth["latitude"].to_numpy(), truth["longitude"].to_numpy()):
        log.warning("the truth's coordinates all fit radians' ranges: if they are radians, "
                    "convert the truth table to degrees (hiergeo.score reads it as degrees)")
        return "degrees"
    if not _fits_radians(lat, lon):
        return "degrees"
    j = truth.set_index("id").reindex(pred.table["id"])
    ok = j["latitude"].notna().to_numpy()
    if not ok.any():
        return "degrees"
    tl, tn = j["latitude"].to_numpy()[ok], j["longitude"].to_numpy()[ok]
    as_deg = float(np.median(haversine_km(lat[ok], lon[ok], tl, tn)))
    as_rad = float(np.median(haversine_km(np.degrees(lat[ok]), np.degrees(lon[ok]), tl, tn)))
    if as_rad * RADIANS_EVIDENCE <= as_deg:
        log.warning("%s: coordinates look like radians (median error %.0f km read as radians, "
                    "%.0f km as degrees): converted to degrees; pass --units degrees to refuse",
                    where, as_rad, as_deg)
        pred.notes.append(f"radians detected and converted (median error {as_rad:,.0f} km as "
                          f"radians, {as_deg:,.0f} km as degrees)")
        return "radians"
    if as_rad < as_deg:
        raise ScoreInputError(
            f"{where}: every coordinate fits radians' ranges and reading them as radians "
            f"gives a median error of {as_rad:,.0f} km against {as_deg:,.0f} km as degrees: "
            "not clear enough to decide. Pass --units degrees or --units radians")
    return "degrees"


@dataclass
class Joined:
    """Predictions and truth on the same rows (``truth``'s order): ``truth``, ``preds`` (one
    table per model, aligned), ``unmatched`` (``id, model, why`` of every row left out)."""

    truth: pd.DataFrame
    preds: list[Predictions]
    unmatched: pd.DataFrame


def join(preds: list[Predictions], truth: pd.DataFrame, *, allow_unmatched: bool = False,
         truth_source: str = "truth") -> Joined:
    """Align every model's rows with the truth's by id. Ids a model has that the truth lacks,
    and truth ids a model has no answer for, are refused with counts and examples, or with
    ``allow_unmatched`` left out and listed (``Joined.unmatched``): the rows scored are then
    those every model answered, so that models are compared on the same photos."""
    tids = pd.Index(truth["id"])
    common = np.ones(len(truth), bool)
    lost, problems = [], []
    for p in preds:
        pids = pd.Index(p.table["id"])
        extra = pids.difference(tids)
        missing = tids.difference(pids)
        lost += [(i, p.name, "prediction without truth") for i in extra]
        lost += [(i, p.name, "truth without prediction") for i in missing]
        if len(extra) or len(missing):
            problems.append(
                f"{p.name}: {len(extra)} prediction ids not in the truth"
                + (f" (e.g. {', '.join(map(repr, extra[:3]))})" if len(extra) else "")
                + f", {len(missing)} of {len(tids)} truth ids without a prediction"
                + (f" (e.g. {', '.join(map(repr, missing[:3]))})" if len(missing) else ""))
        common &= tids.isin(pids)
    unmatched = pd.DataFrame(lost, columns=["id", "model", "why"])
    if problems and not allow_unmatched:
        raise ScoreInputError(
            f"ids do not match {truth_source}: {'; '.join(problems)}. Fix the ids (same "
            "spelling as the truth's id column), or pass --allow-unmatched to score the "
            f"{int(common.sum())} rows every model answered (the rest listed in "
            "unmatched.csv)")
    if not common.any():
        raise ScoreInputError(f"no id is shared by {truth_source} and every prediction file: "
                              "are the id columns the same ids?")
    t = truth.loc[common].reset_index(drop=True)
    aligned = [Predictions(p.name, p.table.set_index("id").loc[t["id"]].reset_index(),
                           p.source, p.notes) for p in preds]
    return Joined(t, aligned, unmatched)


def model_names(paths: list[str | Path], names: list[str] | None = None) -> list[str]:
    """A label per prediction file: ``names`` when given (as many), else the file stems,
    made unique with their folder when two share a stem."""
    if names:
        if len(names) != len(paths):
            raise ScoreInputError(f"{len(names)} names for {len(paths)} prediction files")
        out = list(names)
    else:
        stems = [Path(p).stem for p in paths]
        out = [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s
               for p, s in zip(paths, stems, strict=True)]
    if len(set(out)) != len(out):
        raise ScoreInputError(f"two models share a name in {out}; give --name for each")
    bad = [n for n in out if not re.fullmatch(r"[^\n\r\t]+", n)]
    if bad:
        raise ScoreInputError(f"model names must be one line of text, not {bad}")
    return out
