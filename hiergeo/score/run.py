"""Files in, files out: :func:`score_files` reads prediction files and a truth table, scores
each model, compares them and writes the reports (see :mod:`hiergeo.score`)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from ..files import atomic_write_text, temporary_names
from ..metrics import markdown_table
from .compare import compare
from .read import (
    ScoreInputError,
    check_units,
    join,
    model_names,
    read_predictions,
    read_truth,
)
from .scoring import Scored, score, truth_with_keys

log = logging.getLogger(__name__)


def _folder(name: str) -> str:
    """A model's name as a folder name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "model"


#: what score_files writes beside the models' folders: no model's folder may take these names
OWN_FILES = ("summary.json", "unmatched.csv", "comparison.csv", "comparison.md",
             "compare.html", "difference_map.png")


def _check_out(out: str | Path | None, labels: list[str]) -> None:
    """Refuse, before anything is read, an ``out`` that is a file, and model names that would
    share a folder (``a b`` and ``a_b``) or take one of :data:`OWN_FILES`."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ScoreInputError(f"{out}: a file, not a folder; give --out a folder to write "
                              "the reports into")
    folders = [_folder(n) for n in labels]
    for f in set(folders):
        same = [n for n, g in zip(labels, folders, strict=True) if g == f]
        if len(same) > 1 or f in OWN_FILES:
            raise ScoreInputError(f"models {', '.join(map(repr, same))} would be written to "
                                  f"the folder {f!r}: name them apart with --name")


def _csv(df: pd.DataFrame, path: Path) -> None:
    with temporary_names(path) as (tmp,):
        df.to_csv(tmp, index=False)
        tmp.replace(path)


def _write_model(s: Scored, folder: Path, gz, maps: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "metrics.json", json.dumps(
        {**s.summary, "calibration": s.calibration, "notes": s.notes}, indent=2,
        default=float) + "\n")
    _csv(s.per_country, folder / "per_country.csv")
    atomic_write_text(folder / "per_country.md", markdown_table(s.per_country))
    _csv(s.rows, folder / "rows.csv")
    if maps:
        from ..reports import error_map, reliability_diagram

        error_map(s.per_country, gz, folder / "error_map.png",
                  title=f"{s.name}: median error per true country")
        if s.calibration:
            reliability_diagram(s.calibration, folder / "reliability.png", title=s.name)


def score_files(predictions: list[str | Path], truth: str | Path, *,
                out: str | Path | None = "score", names: list[str] | None = None,
                units: str = "auto", samples: str | None = None,
                allow_unmatched: bool = False, resamples: int = 1000, seed: int = 0,
                geocoder: str = "gazetteer", confidence_level: str = "country",
                id_column: str | None = None, lat_column: str | None = None,
                lon_column: str | None = None, maps: bool = True) -> dict:
    """Score every file of ``predictions`` against ``truth`` and, with two or more, compare
    them (the first is the reference); write the reports into ``out`` (None: write nothing).

    Returns ``{"truth", "rows", "labels", "models": {name: {"summary", "calibration",
    "notes", "folder"}}, "comparison": DataFrame or None, "unmatched": DataFrame, "files"}``.
    Input that cannot be scored raises :class:`~hiergeo.score.read.ScoreInputError`
    before anything is written.
    """
    import gazetteer

    if not predictions:
        raise ScoreInputError("no prediction file given")
    if geocoder not in ("gazetteer", "reverse_geocoder"):
        raise ScoreInputError(f"geocoder must be 'gazetteer' or 'reverse_geocoder', not "
                              f"{geocoder!r}")
    labels = model_names(predictions, names)
    _check_out(out, labels)
    t = read_truth(truth, id_column=id_column)
    preds = [read_predictions(p, name=n, id_column=id_column, lat_column=lat_column,
                              lon_column=lon_column, samples=samples,
                              confidence_level=confidence_level)
             for p, n in zip(predictions, labels, strict=True)]
    preds = [check_units(p, t, units) for p in preds]
    joined = join(preds, t, allow_unmatched=allow_unmatched, truth_source=str(truth))
    gz = gazetteer.load()
    coder = "reverse_geocoder" if geocoder == "reverse_geocoder" else gz
    keyed, labels_from = truth_with_keys(joined.truth, coder)
    countries = gz.level("country")
    cnames = dict(zip(countries["key"], countries["name"], strict=True))
    scored = [score(p, keyed, coder, cnames) for p in joined.preds]
    table = (compare(scored, resamples=resamples, seed=seed, country_names=cnames)
             if len(scored) > 1 else None)
    result = {"truth": str(truth), "rows": len(keyed), "truth_rows": len(t),
              "labels": labels_from, "models": {}, "comparison": table,
              "unmatched": joined.unmatched, "files": [],
              "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95}}
    for s in scored:
        result["models"][s.name] = {"summary": s.summary, "calibration": s.calibration,
                                    "notes": s.notes, "source": next(
                                        p.source for p in preds if p.name == s.name)}
    if out is None:
        return result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in scored:
        folder = out / _folder(s.name)
        _write_model(s, folder, gz, maps)
        result["models"][s.name]["folder"] = str(folder)
        result["files"].append(str(folder))
    if len(joined.unmatched):
        _csv(joined.unmatched, out / "unmatched.csv")
        result["files"].append(str(out / "unmatched.csv"))
    if table is not None:
        _write_comparison(table, scored, out, gz, maps, result)
    atomic_write_text(out / "summary.json", json.dumps(plain(result), indent=2,
                                                       default=float) + "\n")
    result["files"].append(str(out / "summary.json"))
    return result


def _write_comparison(table, scored, out: Path, gz, maps: bool, result: dict) -> None:
    from ..reports.compare_page import country_differences, write_compare

    _csv(table, out / "comparison.csv")
    overall = table[table["scope"] == "overall"].drop(columns=["scope", "name",
                                                               "country_name"])
    atomic_write_text(out / "comparison.md", markdown_table(overall))
    result["files"] += [str(out / "comparison.csv"), str(out / "comparison.md")]
    names = [s.name for s in scored]
    ref, first = names[0], names[1]
    if maps:
        from ..reports import difference_map

        difference_map(country_differences(table, "geoscore", first), gz,
                       out / "difference_map.png",
                       f"GeoScore per true country: {first} minus {ref}")
        result["files"].append(str(out / "difference_map.png"))
    facts = [f"{result['rows']:,} photos", f"truth: {Path(result['truth']).name}",
             f"labels: {result['labels']}",
             f"paired bootstrap, {result['bootstrap']['resamples']} resamples"]
    if len(result["unmatched"]):
        facts.append(f"{len(result['unmatched'])} unmatched rows left out (unmatched.csv)")
    write_compare(table, names, out / "compare.html", title=" vs ".join(names), facts=facts)
    result["files"].append(str(out / "compare.html"))


def plain(result: dict) -> dict:
    """``result`` as JSON: tables as lists of records."""
    out = dict(result)
    cmp = result.get("comparison")
    out["comparison"] = None if cmp is None else json.loads(
        cmp[cmp["scope"] == "overall"].to_json(orient="records"))
    out["unmatched"] = {"n": len(result["unmatched"]),
                        "by_reason": result["unmatched"].groupby("why").size().to_dict()
                        if len(result["unmatched"]) else {}}
    return out
