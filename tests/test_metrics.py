"""OSV-5M metrics: hand-computed cases, the official formulas, reverse_geocoder itself."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hiergeo import metrics

R = 6371.0


def _official_haversine(pred_deg, gt_deg):
    """OSV-5M's formula as its metric code writes it: torch, radians, arctan2."""
    pred, gt = torch.deg2rad(torch.as_tensor(pred_deg)), torch.deg2rad(torch.as_tensor(gt_deg))
    lhs = torch.sin((pred[:, 0] - gt[:, 0]) / 2) ** 2
    rhs = torch.cos(pred[:, 0]) * torch.cos(gt[:, 0]) * torch.sin((pred[:, 1] - gt[:, 1]) / 2) ** 2
    a = lhs + rhs
    return 6371 * 2 * torch.arctan2(torch.sqrt(a), torch.sqrt(1 - a))


@pytest.mark.parametrize("p,q,km", [
    ((48.85, 2.35), (48.85, 2.35), 0.0),                   # the same point
    ((0.0, 0.0), (0.0, 180.0), math.pi * R),               # antipodal on the equator
    ((90.0, 0.0), (-90.0, 0.0), math.pi * R),              # pole to pole
    ((90.0, 10.0), (90.0, -170.0), 0.0),                   # the pole, any longitude
    ((0.0, 179.5), (0.0, -179.5), math.pi * R / 180),      # across the antimeridian: 1 degree
    ((0.0, 0.0), (1.0, 0.0), math.pi * R / 180),
])
def test_haversine_hand_cases(p, q, km):
    got = metrics.haversine_km(p[0], p[1], q[0], q[1])
    assert abs(float(got) - km) < 1e-6


def test_haversine_matches_official_formula():
    rng = np.random.default_rng(0)
    a = np.stack([rng.uniform(-90, 90, 5000), rng.uniform(-180, 180, 5000)], 1)
    b = np.concatenate([a[:1000] + rng.normal(0, 0.01, (1000, 2)),  # nearby pairs too
                        np.stack([rng.uniform(-90, 90, 4000), rng.uniform(-180, 180, 4000)], 1)])
    ours = metrics.haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    ref = _official_haversine(a, b).numpy()
    assert np.abs(ours - ref).max() < 1e-6
    s_ours, s_ref = metrics.geoscore(ours), 5000 * torch.exp(-torch.as_tensor(ref) / 1492.7)
    assert np.abs(s_ours - s_ref.numpy()).max() < 1e-6


def test_geoscore_values():
    assert metrics.geoscore(0.0) == 5000.0
    assert abs(metrics.geoscore(1492.7) - 5000 / math.e) < 1e-9


def _truth(lat, lon, keys):
    t = pd.DataFrame({"latitude": lat, "longitude": lon})
    for lvl, col in zip(["country", "region", "sub-region", "city"], range(4), strict=True):
        t[f"unique_{lvl}"] = [k[col] for k in keys]
    return t


def test_hits_match_reverse_geocoder_exactly(world):
    """Our geocoder and reverse_geocoder.search give the same hits, row for row."""
    rng = np.random.default_rng(1)
    pl = world.places.sample(400, random_state=1)
    lat = pl["lat"].to_numpy() + rng.normal(0, 0.2, len(pl))
    lon = pl["lon"].to_numpy() + rng.normal(0, 0.2, len(pl))
    truth_lab = world.label(pl["lat"], pl["lon"], mode="osv5m")
    truth = pd.DataFrame({"unique_country": truth_lab["country"].astype(str),
                          "unique_region": truth_lab["region"].astype(str),
                          "unique_sub-region": truth_lab["subregion"].astype(str),
                          "unique_city": truth_lab["city"].astype(str)})
    ours = metrics.osv5m_hits(lat, lon, truth, geocoder=world)
    theirs = metrics.osv5m_hits(lat, lon, truth, geocoder="reverse_geocoder")
    pd.testing.assert_frame_equal(ours, theirs)
    assert 0 < ours["city"].mean() < 1  # both outcomes occur: the comparison means something


def test_hits_mask_missing_truth_and_compare_raw_keys(world):
    # Paris, then Windhoek (Namibia: code NA), then a row whose region truth is "nan"
    lat, lon = [48.8566, -22.5594, 48.8566], [2.3522, 17.0832, 2.3522]
    truth = _truth(lat, lon, [
        ("FR", "Ile-de-France_FR", "Paris_Ile-de-France_FR", "Paris_Paris_Ile-de-France_FR"),
        ("NA", "Khomas_NA", "nan", "Windhoek__Khomas_NA"),
        ("DE", "nan", None, ""),
    ])
    h = metrics.osv5m_hits(lat, lon, truth, geocoder=world)
    assert h.loc[0].tolist() == [True, True, True, True]
    assert h.loc[1, "country"] and h.loc[1, "region"] and h.loc[1, "city"]
    assert h.loc[1, "sub-region"] is pd.NA
    assert h.loc[2, "country"] == False  # noqa: E712 - a real False, not <NA>
    assert h.loc[2, ["region", "sub-region", "city"]].isna().all()
    s = metrics.osv5m_summary(lat, lon, truth, geocoder=world)
    assert s["n_region"] == 2 and s["n_subregion"] == 1 and s["n_city"] == 2
    assert s["acc_country"] == pytest.approx(2 / 3)
    assert s["acc_1km"] == 1.0 and s["median_km"] < 1


def test_part_columns_build_osv5m_keys(world):
    truth = pd.DataFrame({"latitude": [-22.5594], "longitude": [17.0832], "country": ["NA"],
                          "region": ["Khomas"], "sub-region": [np.nan], "city": ["Windhoek"]})
    h = metrics.osv5m_hits([-22.5594], [17.0832], truth, geocoder=world)
    assert h.loc[0, "country"] and h.loc[0, "city"] and h.loc[0, "sub-region"] is pd.NA


def test_thresholds():
    km = np.array([1.001, 0.999, 25.001, 2499.0])
    lat2 = np.degrees(km / R)  # points due north of (0, 0) at these distances
    truth = pd.DataFrame({"latitude": lat2, "longitude": 0.0, "country": "XX", "region": "",
                          "sub-region": "", "city": ""})
    hits = pd.DataFrame({c: pd.array([pd.NA] * 4, dtype="boolean")
                         for c in ["country", "region", "sub-region", "city"]})
    s = metrics.osv5m_summary(np.zeros(4), np.zeros(4), truth, hits=hits)
    assert s["acc_1km"] == 0.25 and s["acc_25km"] == 0.5 and s["acc_2500km"] == 1.0


def test_bad_inputs_raise():
    truth = pd.DataFrame({"latitude": [0.0, 1.0], "longitude": [0.0, 1.0], "country": ["FR"] * 2,
                          "region": [""] * 2, "sub-region": [""] * 2, "city": [""] * 2})
    with pytest.raises(ValueError, match=r"NaN or infinite \(rows \[1\]"):
        metrics.osv5m_summary([0.0, np.nan], [0.0, 0.0], truth)
    with pytest.raises(ValueError, match="2 truth rows"):
        metrics.osv5m_hits([0.0], [0.0], truth)
    with pytest.raises(ValueError, match="key columns"):
        metrics.osv5m_hits([0.0], [0.0], pd.DataFrame({"x": [1]}))


def test_per_country_sums_to_global(world):
    rng = np.random.default_rng(2)
    pl = world.places.sample(300, random_state=2)
    lab = world.label(pl["lat"], pl["lon"], mode="osv5m")
    truth = pd.DataFrame({"latitude": pl["lat"].to_numpy(), "longitude": pl["lon"].to_numpy(),
                          **{f"unique_{c}": lab[lvl].astype(str).to_numpy() for c, lvl in
                             [("country", "country"), ("region", "region"),
                              ("sub-region", "subregion"), ("city", "city")]}})
    truth.loc[:9, "unique_region"] = "nan"  # some masked truth
    plat = truth["latitude"].to_numpy() + rng.normal(0, 3, len(truth))
    plon = truth["longitude"].to_numpy() + rng.normal(0, 3, len(truth))
    pk = metrics.predicted_keys(plat, plon, world)
    hits = metrics.hits_from_keys(pk, truth)
    km = metrics.haversine_km(plat, plon, truth["latitude"], truth["longitude"])
    table = metrics.per_country(truth["unique_country"].to_numpy(), pk["country"].to_numpy(),
                                km, hits)
    s = metrics.osv5m_summary(plat, plon, truth, hits=hits)
    assert table["n"].sum() == s["n"] == 300
    for lvl, col in [("country", "country"), ("region", "region"),
                     ("subregion", "sub-region"), ("city", "city")]:
        assert table[f"n_{lvl}"].sum() == s[f"n_{lvl}"]
        assert table[f"hits_{lvl}"].sum() == int(hits[col].sum())
    assert table["n"].is_monotonic_decreasing
    wrong = table[table["acc_country"] < 1]
    assert (wrong["top_confusion"] != "").all() and (wrong["top_confusion_n"] > 0).all()
    assert (np.average(table["mean_km"], weights=table["n"]) == pytest.approx(s["mean_km"]))


def test_entity_accuracy():
    paths = np.array([[[1, 2, 3, 4], [1, 2, 3, 5]], [[6, 7, 8, 9], [1, 2, 3, 4]]])
    truth = np.array([[1, 2, 3, 5], [1, 2, -1, 4]])
    acc = metrics.entity_accuracy(paths, truth, ks=(1, 2))
    assert acc["top1_country"] == 0.5 and acc["top2_country"] == 1.0
    assert acc["top1_city"] == 0.0 and acc["top2_city"] == 1.0
    assert acc["n_subregion"] == 1 and acc["top1_subregion"] == 1.0
