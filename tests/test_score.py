"""hiergeo.score: peers' prediction files scored exactly as hiergeo.metrics scores the same
points, models compared with paired bootstrap intervals, bad input refused in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import gazetteer
from gazetteer.keys import LEVELS, OSV5M_KEY_COLUMNS
from hiergeo import metrics
from hiergeo.cli.score import main
from hiergeo.score import Scored, compare, score_files
from hiergeo.score.read import ScoreInputError

N = 240


@pytest.fixture(scope="module")
def gz(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HIERGEO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield gazetteer.load()


@pytest.fixture(scope="module")
def world_rows(gz):
    """Truth at N random cities (OSV-5M key columns from the osv5m labels), and two models:
    ``good`` a few km off, ``bad`` elsewhere for 40% of the rows."""
    rng = np.random.default_rng(0)
    cities = gz.level("city")
    pick = cities.iloc[rng.choice(len(cities), N, replace=False)]
    lat = pick["point_lat"].to_numpy() + rng.normal(0, 0.01, N)
    lon = pick["point_lon"].to_numpy() + rng.normal(0, 0.01, N)
    ids = [f"img{i:04d}" for i in range(N)]
    lab = gz.label(lat, lon, mode="osv5m")
    truth = pd.DataFrame({"id": ids, "latitude": lat, "longitude": lon,
                          **{OSV5M_KEY_COLUMNS[lv]: lab[lv].astype(str).to_numpy(object)
                             for lv in LEVELS}})
    good = (np.clip(lat + rng.normal(0, 0.2, N), -89, 89),
            (lon + rng.normal(0, 0.2, N) + 180) % 360 - 180)
    far = rng.random(N) < 0.4
    other = cities.iloc[rng.choice(len(cities), N)]
    bad = (np.where(far, other["point_lat"], good[0]), np.where(far, other["point_lon"], good[1]))
    return truth, ids, good, bad


def _truth_csv(truth, tmp_path, labels=True):
    t = truth if labels else truth[["id", "latitude", "longitude"]]
    path = tmp_path / ("truth.csv" if labels else "truth_plain.csv")
    t.to_csv(path, index=False)
    return path


def _expected(gz, truth, lat, lon):
    return metrics.osv5m_summary(lat, lon, truth, geocoder=gz)


def _same(a: dict, b: dict):
    for k, v in b.items():
        assert k in a, k
        assert a[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(a[k])), k


# -- peers' formats reproduce hiergeo.metrics exactly ---------------------------------------
def test_osv5m_baseline_radians_are_detected_and_scored_exactly(gz, world_rows, tmp_path,
                                                                 caplog):
    truth, ids, good, _ = world_rows
    rad = pd.DataFrame({"id": ids, "lat": np.radians(good[0]), "lon": np.radians(good[1])})
    rad.to_csv(tmp_path / "osv5m_baseline.csv", index=False)
    for labels in (True, False):  # OSV-5M's label columns, or the gazetteer's labels
        res = score_files([tmp_path / "osv5m_baseline.csv"], _truth_csv(truth, tmp_path, labels),
                          out=None)
        s = res["models"]["osv5m_baseline"]
        # exactly what hiergeo.metrics gives on the same points (radians -> degrees)
        _same(s["summary"], _expected(gz, truth, np.degrees(rad["lat"]),
                                      np.degrees(rad["lon"])))
        assert any("radians detected" in n for n in s["notes"])
    assert "look like radians" in caplog.text
    # told they are degrees, they are scored as degrees (and lose)
    res = score_files([tmp_path / "osv5m_baseline.csv"], _truth_csv(truth, tmp_path), out=None,
                      units="degrees")
    assert res["models"]["osv5m_baseline"]["summary"]["median_km"] > 1000


def test_geoclip_topk_columns_score_rank_one(gz, world_rows, tmp_path):
    truth, ids, good, bad = world_rows
    rng = np.random.default_rng(1)
    wide = {"id": ids, "lat_1": good[0], "lon_1": good[1], "p_1": rng.uniform(0.2, 1, N)}
    for k in range(2, 6):
        wide[f"lat_{k}"], wide[f"lon_{k}"] = bad[0], bad[1]
        wide[f"p_{k}"] = wide["p_1"] / k
    pd.DataFrame(wide).to_parquet(tmp_path / "geoclip.parquet")
    res = score_files([tmp_path / "geoclip.parquet"], _truth_csv(truth, tmp_path), out=None)
    s = res["models"]["geoclip"]
    _same(s["summary"], _expected(gz, truth, good[0], good[1]))
    cal = s["calibration"]["country"]
    assert set(s["calibration"]) == {"country"} and cal["n"] == N
    assert cal["accuracy"] == pytest.approx(s["summary"]["acc_country"])


def test_long_topk_and_samples(gz, world_rows, tmp_path):
    truth, ids, good, bad = world_rows
    # GeoCLIP's top-k as rows, shuffled: the lowest rank is scored
    long = pd.concat([pd.DataFrame({"image_id": ids, "rank": 2, "lat": bad[0], "lon": bad[1]}),
                      pd.DataFrame({"image_id": ids, "rank": 1, "lat": good[0],
                                    "lon": good[1]})]).sample(frac=1, random_state=0)
    long.to_csv(tmp_path / "geoclip_long.csv", index=False)
    res = score_files([tmp_path / "geoclip_long.csv"], _truth_csv(truth, tmp_path), out=None)
    _same(res["models"]["geoclip_long"]["summary"], _expected(gz, truth, good[0], good[1]))
    # PLONK-style samples: refused as duplicates unless told how to pick one
    rng = np.random.default_rng(2)
    near = [(good[0] + rng.normal(0, 0.05, N), good[1] + rng.normal(0, 0.05, N))
            for _ in range(2)]
    samples = pd.concat([pd.DataFrame({"id": ids, "lat": a, "lon": b})
                         for a, b in [bad, good, *near]])
    samples.to_csv(tmp_path / "plonk.csv", index=False)
    with pytest.raises(ScoreInputError, match="--samples first or --samples medoid"):
        score_files([tmp_path / "plonk.csv"], _truth_csv(truth, tmp_path), out=None)
    first = score_files([tmp_path / "plonk.csv"], _truth_csv(truth, tmp_path), out=None,
                        samples="first")
    _same(first["models"]["plonk"]["summary"], _expected(gz, truth, bad[0], bad[1]))
    # the medoid: the central one of good and its two neighbours, never the far "bad" sample
    med = score_files([tmp_path / "plonk.csv"], _truth_csv(truth, tmp_path), out=None,
                      samples="medoid")
    assert med["models"]["plonk"]["summary"]["median_km"] < 60


def test_commercial_api_geojson_and_keys(gz, world_rows, tmp_path):
    truth, ids, good, _ = world_rows
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [b, a]},
              "properties": {"image": i, "confidence": 0.9, "country_key": k}}
             for i, a, b, k in zip(ids, good[0], good[1], truth["unique_country"], strict=True)]
    (tmp_path / "api.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                      "features": feats}))
    res = score_files([tmp_path / "api.geojson"], _truth_csv(truth, tmp_path), out=None)
    s = res["models"]["api"]
    _same(s["summary"], _expected(gz, truth, good[0], good[1]))
    assert s["summary"]["key_acc_country"] == 1.0  # its own keys are all right
    assert s["calibration"]["country"]["accuracy"] == 1.0


# -- comparing ------------------------------------------------------------------------------
def _synthetic(name, hits, km, country):
    rows = pd.DataFrame({"id": np.arange(len(km)).astype(str), "true_country": country,
                         "pred_country": country, "km": km})
    for lvl in LEVELS:
        rows[f"hit_{lvl}"] = hits.astype(float)
    return Scored(name, {}, pd.DataFrame(), rows)


def test_paired_intervals_cover_the_true_difference():
    """Two models whose country accuracy differs by 0.1 in the population: the 95% interval
    of the difference covers 0.1 in about 95% of samples, and names the better model."""
    covered, named = 0, 0
    trials = 40
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        n = 600
        a = rng.random(n) < 0.6
        b = np.where(rng.random(n) < 0.5, a, rng.random(n) < 0.4)  # correlated: paired helps
        km = rng.exponential(500, n)
        table = compare([_synthetic("a", a, km, "FR"), _synthetic("b", b, km + 50, "FR")],
                        resamples=300, seed=t)
        r = table[(table["scope"] == "overall") & (table["metric"] == "acc_country")].iloc[0]
        covered += r.ci_low <= -0.1 <= r.ci_high
        named += r.better == "a"
        k = table[(table["scope"] == "overall") & (table["metric"] == "mean_km")].iloc[0]
        assert k["diff"] == pytest.approx(50) and k.better == "a"  # lower km is better
    assert 0.85 <= covered / trials <= 1.0
    assert named >= 0.8 * trials


def test_compare_is_seeded_per_country_and_overall():
    rng = np.random.default_rng(0)
    n = 300
    country = np.where(rng.random(n) < 0.7, "FR", "NA")  # Namibia's code is a string
    a, b = rng.random(n) < 0.7, rng.random(n) < 0.3
    km = rng.exponential(300, n)
    models = [_synthetic("a", a, km, country), _synthetic("b", b, km, country)]
    t1 = compare(models, resamples=200, seed=3)
    t2 = compare(models, resamples=200, seed=3)
    pd.testing.assert_frame_equal(t1, t2)
    assert list(t1[t1["scope"] == "country"]["name"].unique()) == ["FR", "NA"]
    fr = t1[(t1["name"] == "FR") & (t1["metric"] == "acc_country")].iloc[0]
    mask = country == "FR"
    assert fr.n == mask.sum()
    assert fr["diff"] == pytest.approx(b[mask].mean() - a[mask].mean())
    assert fr.better == "a" and fr.ci_high < 0


def test_a_small_country_names_no_winner():
    """Percentile intervals from a few photos are too narrow (one photo: a point): below
    MIN_ROWS a country's difference is reported but names no better model."""
    from hiergeo.score.compare import MIN_ROWS

    n = MIN_ROWS + 1
    country = np.array(["FR"] * n + ["LU"])  # Luxembourg: one photo, a sure-looking loss
    a, b = np.ones(n + 1, bool), np.zeros(n + 1, bool)
    km = np.full(n + 1, 100.0)
    t = compare([_synthetic("a", a, km, country), _synthetic("b", b, km, country)],
                resamples=100, seed=0)
    acc = t[t["metric"] == "acc_country"].set_index("name")
    assert acc.loc["LU", "ci_low"] == acc.loc["LU", "ci_high"] == -1.0
    assert acc.loc["LU", "better"] == "" and acc.loc["FR", "better"] == "a"


def test_two_models_compare_through_the_command(gz, world_rows, tmp_path, capsys):
    truth, ids, good, bad = world_rows
    pd.DataFrame({"id": ids, "lat": good[0], "lon": good[1]}).to_csv(tmp_path / "good.csv",
                                                                      index=False)
    pd.DataFrame({"id": ids, "latitude": bad[0], "longitude": bad[1],
                  "probability": 0.5}).to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "cmp"
    rc = main([str(tmp_path / "bad.csv"), str(tmp_path / "good.csv"), "--truth",
               str(_truth_csv(truth, tmp_path)), "--out", str(out), "--resamples", "200",
               "--name", "bad", "--name", "<good & new>"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "GeoScore" in text and "compare.html" in text
    table = pd.read_csv(out / "comparison.csv", keep_default_na=False, na_values=[""])
    g = table[(table["scope"] == "overall") & (table["metric"] == "geoscore")].iloc[0]
    assert g["better"] == "<good & new>" and g["ci_low"] > 0
    assert {"bad", "<good & new>"} <= set(table.columns)
    page = (out / "compare.html").read_text()
    assert "Content-Security-Policy" in page and "&lt;good &amp; new&gt;" in page
    assert "<good & new>" not in page and "http" not in page.replace("http-equiv", "")
    for f in ("bad/metrics.json", "good_new/per_country.csv", "difference_map.png",
              "summary.json", "bad/reliability.png"):
        assert (out / f).exists(), f
    # per-country table as hiergeo.evaluate writes it, rows adding up to the whole
    pc = pd.read_csv(out / "bad" / "per_country.csv", keep_default_na=False)
    assert pc["n"].sum() == N
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["bad"]["summary"]["n"] == N


# -- bad input ------------------------------------------------------------------------------
def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [e for e in err if e.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case, expect", [
    ("unmatched", "ids do not match"),
    ("duplicated", "appear more than once"),
    ("range", "out of range"),
    ("empty", "has no rows"),
    ("nan", "no valid latitude"),
    ("columns", "no latitude column found"),
    ("truth_dup", "more than once in the truth"),
])
def test_bad_input_is_one_line_and_exit_2(world_rows, tmp_path, capsys, case, expect):
    truth, ids, good, _ = world_rows
    tpath = _truth_csv(truth, tmp_path)
    p = pd.DataFrame({"id": ids, "lat": good[0], "lon": good[1]})
    if case == "unmatched":
        p.loc[3, "id"] = "nobody"
    elif case == "duplicated":
        p.loc[5, "id"] = p.loc[4, "id"]
    elif case == "range":
        p.loc[7, "lat"] = 123.0
    elif case == "empty":
        p = p.iloc[:0]
    elif case == "nan":
        p.loc[2, "lat"] = np.nan
    elif case == "columns":
        p = p.rename(columns={"lat": "north"})
    elif case == "truth_dup":
        pd.concat([truth, truth.iloc[:1]]).to_csv(tpath, index=False)
    path = tmp_path / "pred.csv"
    p.to_csv(path, index=False)
    assert main([str(path), "--truth", str(tpath), "--out", str(tmp_path / "o")]) == 2
    line = _err(capsys)
    assert expect in line
    assert not (tmp_path / "o").exists()  # nothing written


def test_unmatched_rows_are_listed_when_allowed(world_rows, tmp_path, capsys):
    truth, ids, good, _ = world_rows
    p = pd.DataFrame({"id": ids, "lat": good[0], "lon": good[1]})
    p.loc[3, "id"] = "nobody"
    p.iloc[:-5].to_csv(tmp_path / "pred.csv", index=False)
    tpath = _truth_csv(truth, tmp_path)
    assert main([str(tmp_path / "pred.csv"), "--truth", str(tpath)]) == 2
    assert "1 prediction ids not in the truth (e.g. 'nobody'), 6 of 240 truth ids" in \
        _err(capsys)
    out = tmp_path / "o"
    assert main([str(tmp_path / "pred.csv"), "--truth", str(tpath), "--out", str(out),
                 "--allow-unmatched", "--json", "--no-maps"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["rows"] == N - 6 and res["unmatched"]["n"] == 7
    assert "7 unmatched rows left out" in captured.err
    un = pd.read_csv(out / "unmatched.csv")
    assert set(un["why"]) == {"prediction without truth", "truth without prediction"}
    assert "nobody" in set(un["id"])


def test_python_m_hiergeo_score_help():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hiergeo.score", "--help"], capture_output=True,
                       text=True, check=True)
    assert "--truth" in r.stdout and "OSV-5M" in r.stdout


def test_degrees_near_the_origin_are_not_taken_for_radians():
    """A weak model's degrees that happen to fit radians' ranges (points near (0, 0)) scored
    on a European truth: reading them as radians would flatter it, but not by the margin
    --units auto needs, so it refuses and asks; true radians are converted."""
    from hiergeo.score.read import Predictions, check_units

    rng = np.random.default_rng(0)
    n = 50
    truth = pd.DataFrame({"id": [str(i) for i in range(n)],
                          "latitude": rng.uniform(43, 52, n), "longitude": rng.uniform(0, 12, n)})
    # read as radians these land around Europe (median 2,500 km off, against 5,300 as degrees)
    near_origin = pd.DataFrame({"id": truth["id"], "lat": rng.uniform(0.4, 1.4, n),
                                "lon": rng.uniform(-0.6, 0.8, n)})
    with pytest.raises(ScoreInputError, match="--units degrees or --units radians"):
        check_units(Predictions("weak", near_origin, "weak.csv", []), truth)
    kept = check_units(Predictions("weak", near_origin, "weak.csv", []), truth, "degrees")
    assert np.array_equal(kept.table["lat"], near_origin["lat"])
    radians = pd.DataFrame({"id": truth["id"], "lat": np.radians(truth["latitude"] + 0.1),
                            "lon": np.radians(truth["longitude"] - 0.1)})
    got = check_units(Predictions("rad", radians, "rad.csv", []), truth)
    assert np.allclose(got.table["lat"], truth["latitude"] + 0.1)
    assert any("radians detected" in n for n in got.notes)


def test_the_maps_colour_by_who_is_better_whichever_way_the_metric_runs():
    """A model 50 km worse everywhere: its median_km difference is +50 but it is the worse
    one, so the maps' gain is negative; for geoscore (higher is better) the sign is the
    difference's."""
    from hiergeo.score.compare import country_differences

    n = 200
    country = np.array(["FR"] * n)
    km = np.random.default_rng(0).exponential(300, n)
    hits = np.ones(n, bool)
    t = compare([_synthetic("worse", hits, km + 50, country),
                 _synthetic("ref", hits, km, country)], reference=1, resamples=100, seed=0)
    med = country_differences(t, "median_km").iloc[0]
    assert med["diff"] > 0 and med["gain"] < 0 and med["sure"]
    geo = country_differences(t, "geoscore").iloc[0]
    assert geo["diff"] < 0 and geo["gain"] < 0


def test_a_model_s_own_keys_are_scored_against_the_truth_s(gz, world_rows, tmp_path):
    """Every fourth country key wrong: key_acc_country is the share right (the API test above
    has every key right, so it cannot tell a check that always says 'right')."""
    truth, ids, good, _ = world_rows
    keys = truth["unique_country"].to_numpy(object).copy()
    wrong = np.arange(len(keys)) % 4 == 0
    keys[wrong] = ["ZZ" if k != "ZZ" else "YY" for k in keys[wrong]]
    pd.DataFrame({"id": ids, "lat": good[0], "lon": good[1], "country_key": keys}).to_csv(
        tmp_path / "keyed.csv", index=False)
    res = score_files([tmp_path / "keyed.csv"], _truth_csv(truth, tmp_path), out=None)
    assert res["models"]["keyed"]["summary"]["key_acc_country"] == pytest.approx(
        1 - wrong.mean())
