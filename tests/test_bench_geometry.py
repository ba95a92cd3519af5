"""The geometry sweep's bookkeeping (benchmarks/bench_geometry.py): rows merge by run, the
summary's means and spreads, the run plan, the table and the plot; no training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bg():
    spec = importlib.util.spec_from_file_location("bench_geometry",
                                                  ROOT / "benchmarks" / "bench_geometry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(geom, dim, seed, score, tag="", **kw):
    return {"geometry": geom, "dim": dim, "seed": seed, "tag": tag, "acc_country": score / 1e4,
            "acc_region": 0.1, "acc_subregion": 0.05, "acc_city": 0.0, "median_km": 900.0,
            "mean_km": 3000.0, "geoscore": score, **kw}


def test_a_row_replaces_the_same_run_only(bg):
    rows = [_row("poincare", 16, 0, 2000), _row("euclidean", 16, 0, 2100)]
    rows = bg.merge_rows(rows, _row("poincare", 16, 0, 2200))
    assert [r["geoscore"] for r in rows] == [2200, 2100]
    rows = bg.merge_rows(rows, _row("poincare", 16, 1, 2300))
    rows = bg.merge_rows(rows, _row("poincare", 16, 0, 2400, tag="-data"))
    assert len(rows) == 4 and rows[0]["geoscore"] == 2200


def test_summary_means_and_spreads(bg):
    rows = [_row("poincare", 16, s, v) for s, v in enumerate([2000, 2100, 2300])]
    rows += [_row("euclidean", 16, 0, 1900), {**_row("euclidean", 8, 0, 0), "error": "boom"}]
    summ = {(s["geometry"], s["dim"]): s for s in bg.summarise(rows)}
    assert set(summ) == {("poincare", 16), ("euclidean", 16)}  # the failed run is left out
    p = summ[("poincare", 16)]
    assert p["seeds"] == 3 and p["geoscore"] == pytest.approx(2133.333, abs=1e-3)
    assert p["geoscore_sd"] == pytest.approx(152.7525, abs=1e-3)
    assert p["geoscore_range"] == 300
    assert "geoscore_sd" not in summ[("euclidean", 16)]


def test_plan_puts_the_shipped_dimension_first(bg):
    runs = bg.plan(["poincare", "euclidean"], [4, 16, 64], [0], [0, 1, 2], 16)
    assert runs[:6] == [("poincare", 16, 0), ("euclidean", 16, 0), ("poincare", 16, 1),
                        ("euclidean", 16, 1), ("poincare", 16, 2), ("euclidean", 16, 2)]
    assert len(runs) == len(set(runs)) == 10
    # without the shipped dim in --dims, only the extra seeds run there
    assert bg.plan(["poincare"], [4], [0], [], 16) == [("poincare", 4, 0)]


def test_table_and_plot(bg, tmp_path):
    rows = [_row(g, d, s, 2000 + d + s) for g in ("poincare", "sphere") for d in (4, 16)
            for s in (0, 1)] + [{**_row("sphere", 8, 0, 0), "error": "stopped after 9 s"}]
    meta = {"split": "val", "command": "python benchmarks/bench_geometry.py", "machine": "x"}
    md = bg.markdown(rows, meta)
    assert "| - | poincare | 16 | 2 |" in md and "2016 ± 1" in md
    assert "sphere dim 8 seed 0: stopped after 9 s" in md
    bg.write_json(tmp_path / "s.json", rows, meta)
    assert (tmp_path / "s.json").exists()
    bg.plot(rows, tmp_path / "s.png", "val")
    assert (tmp_path / "s.png").stat().st_size > 10_000
