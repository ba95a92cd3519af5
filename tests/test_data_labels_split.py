"""Dataset labels -> entity ids, and the spatial split."""

import numpy as np
import pandas as pd
import pytest

from gazetteer.geo import haversine_km
from hiergeo.data.labels import entity_ids
from hiergeo.data.spatial_split import cell_ids, near_mask, point_split, spatial_split


def test_parts_nan_and_empty_name_the_same_placeholder(small):
    df = pd.DataFrame({
        "latitude": [49.99, 49.99, -44.27], "longitude": [7.6, 7.6, 171.13],
        "country": ["DE", "DE", "NZ"], "region": ["Rheinland-Pfalz"] * 2 + ["Canterbury"],
        "sub-region": ["", "nan", "Timaru District"], "city": ["Kirn", "Kirn", "Pleasant Point"],
    })
    ids, report = entity_ids(small, df)
    keys = small.entities["key"].to_numpy()
    assert keys[ids["subregion_id"][0]] == keys[ids["subregion_id"][1]] == "_Rheinland-Pfalz_DE"
    assert keys[ids["city_id"][2]] == "Pleasant Point_Timaru District_Canterbury_NZ"
    assert report["source"] == "dataset columns" and report["city"]["unknown"] == 0


def test_unique_columns_missing_and_unknown_are_counted(small):
    df = pd.DataFrame({
        "latitude": [0, 0, 0], "longitude": [0, 0, 0],
        "unique_country": ["NA", "NA", "XX"],
        "unique_region": ["Khomas_NA", "nan", "Nowhere_XX"],
        "unique_sub-region": ["nan_Khomas_NA", "", "a_b_XX"],
        "unique_city": ["Windhoek_nan_Khomas_NA", "nan", "c_a_b_XX"],
    })
    ids, report = entity_ids(small, df)
    keys = small.entities["key"].to_numpy()
    assert keys[ids["country_id"][0]] == "NA"  # Namibia, not missing
    assert keys[ids["subregion_id"][0]] == "_Khomas_NA"  # a "nan" part is an empty part
    assert keys[ids["city_id"][0]] == "Windhoek__Khomas_NA"
    assert ids["region_id"].isna().tolist() == [False, True, True]
    assert report["region"] == {"missing": 1, "unknown": 1}
    assert report["country"] == {"missing": 0, "unknown": 1}


def test_a_key_of_another_level_is_unknown(small):
    """The tree's root and a region's key are entities, but not countries: as a country
    label they are unknown (before, the root became a country label and the loss -inf)."""
    df = pd.DataFrame({"latitude": [0, 0], "longitude": [0, 0],
                       "unique_country": ["<root>", "Khomas_NA"],
                       "unique_region": ["Khomas_NA", "Khomas_NA"],
                       "unique_sub-region": ["nan", "nan"], "unique_city": ["nan", "nan"]})
    assert "<root>" in set(small.entities["key"])
    ids, report = entity_ids(small, df)
    assert ids["country_id"].isna().all() and report["country"] == {"missing": 0, "unknown": 2}
    assert not ids["region_id"].isna().any()


def test_without_label_columns_the_gazetteer_labels(small):
    df = pd.DataFrame({"latitude": [-44.27, float("nan")], "longitude": [171.13, 0.0]})
    ids, report = entity_ids(small, df)
    assert report["source"].startswith("gazetteer.label")
    assert small.entities["key"][ids["country_id"][0]] == "NZ"
    assert ids["country_id"].isna().tolist() == [False, True]
    assert report["country"]["missing"] == 1


def _clusters(seed=0, n_centres=300, per=10, spread_deg=0.004):
    """Clusters of nearby photos, as along a street (~400 m spread)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([-60, -180], [70, 180], (n_centres, 2))
    pts = np.repeat(centres, per, axis=0) + rng.normal(0, spread_deg, (n_centres * per, 2))
    return pts[:, 0], pts[:, 1]


def _dense_city(seed=0, n=20_000, side_km=20.0, n_world=3000):
    """``n`` photos uniformly in a ``side_km`` square around Paris (50 per km² by default),
    plus ``n_world`` scattered over the world."""
    rng = np.random.default_rng(seed)
    lat = 48.85 + rng.uniform(-side_km / 2, side_km / 2, n) / 111.2
    lon = 2.35 + rng.uniform(-side_km / 2, side_km / 2, n) / (111.2 * np.cos(np.deg2rad(48.85)))
    lat = np.r_[lat, rng.uniform(-60, 70, n_world)]
    lon = np.r_[lon, rng.uniform(-180, 180, n_world)]
    return lat, lon, np.arange(len(lat)) < n


@pytest.mark.parametrize("cell_km", [2.0, 5.0, 20.0])
def test_spatial_split_by_cells(cell_km):
    lat, lon = _clusters()
    s = spatial_split(lat, lon, test_fraction=0.1, min_km=1.0, seed=1, cell_km=cell_km)
    n = len(lat)
    assert len(s["train"]) + len(s["test"]) + len(s["dropped"]) == n
    assert len(set(s["train"]) & set(s["test"])) == 0
    # the share is reached to within a cluster (10 rows of 3,000)
    assert abs(len(s["test"]) - 0.1 * n) <= 10
    # no cell on both sides
    cells = cell_ids(lat, lon, cell_km)
    assert not set(cells[s["test"]]) & set(cells[np.r_[s["train"], s["dropped"]]])
    assert s["test_cells"] < s["cells"] == len(np.unique(cells))
    # no training row within 1 km of a held-out row; every dropped row was within 1 km
    d = haversine_km(lat[s["train"]][:, None], lon[s["train"]][:, None],
                     lat[s["test"]][None, :], lon[s["test"]][None, :])
    assert d.min() >= 1.0
    if len(s["dropped"]):
        dd = haversine_km(lat[s["dropped"]][:, None], lon[s["dropped"]][:, None],
                          lat[s["test"]][None, :], lon[s["test"]][None, :])
        assert (dd.min(axis=1) < 1.0 + 1e-6).all()
    # seeded
    again = spatial_split(lat, lon, test_fraction=0.1, min_km=1.0, seed=1, cell_km=cell_km)
    assert np.array_equal(again["test"], s["test"])


def test_min_km_zero_drops_nothing():
    lat, lon = _clusters()
    s = spatial_split(lat, lon, test_fraction=0.1, min_km=0.0, seed=1, cell_km=2.0)
    assert len(s["dropped"]) == 0 and len(s["train"]) + len(s["test"]) == len(lat)


def test_a_dense_city_keeps_its_training_data():
    """20,000 photos in 20 x 20 km: the former rule (random held-out photos, then drop every
    photo within 1 km of one) leaves the city no training data at all; 5 km cells keep most
    of it (17,168 here), and the 1 km guarantee still holds."""
    lat, lon, city = _dense_city()
    old = point_split(lat, lon, test_fraction=0.1, min_km=1.0, seed=0)
    new = spatial_split(lat, lon, test_fraction=0.1, min_km=1.0, seed=0, cell_km=5.0)
    kept_old, kept_new = city[old["train"]].sum(), city[new["train"]].sum()
    assert kept_old < 0.01 * city.sum()
    assert kept_new > 0.8 * city.sum()
    assert len(new["dropped"]) < len(old["dropped"]) / 10
    assert city[new["test"]].sum() > 0  # and the city is tested
    assert abs(len(new["test"]) / len(lat) - 0.1) < 0.01
    assert not near_mask(lat[new["train"]], lon[new["train"]], lat[new["test"]],
                         lon[new["test"]], 1.0).any()


def test_cells_are_about_the_size_asked_and_sane_at_poles_and_antimeridian():
    from gazetteer.geo import EARTH_RADIUS_KM

    for cell_km in (1.0, 5.0, 50.0):
        # the number of cells is about the Earth's area over cell_km²
        lat = np.rad2deg(np.arcsin(np.random.default_rng(0).uniform(-1, 1, 200_000)))
        n_cells = int(cell_ids(lat, np.zeros_like(lat), cell_km).max()) + 1
        area = 4 * np.pi * EARTH_RADIUS_KM ** 2
        assert 0.8 < n_cells * cell_km ** 2 / area < 1.25, (cell_km, n_cells)
    # longitude 180 and -180 are one place, and one cell; the antimeridian is a border
    c = cell_ids([10.0, 10.0, 10.0, 10.0], [180.0, -180.0, 179.999, -179.999], 5.0)
    assert c[0] == c[1] and c[2] != c[3]
    # the poles: one band of a few cells, not thousands of slivers
    near_pole = cell_ids(np.full(360, 89.9999), np.arange(-180, 180), 5.0)
    assert 1 <= len(np.unique(near_pole)) <= 4
    assert len(np.unique(cell_ids([90.0, -90.0], [0.0, 0.0], 5.0))) == 2


def test_split_needs_two_cells():
    with pytest.raises(ValueError, match="one cell"):
        spatial_split([45.0, 45.0001], [7.0, 7.0001], 0.5, cell_km=5.0)


def test_near_mask_across_the_antimeridian():
    assert near_mask([0.0], [179.9995], [0.0], [-179.9995], min_km=1.0).tolist() == [True]
    assert near_mask([0.0], [179.99], [0.0], [-179.99], min_km=1.0).tolist() == [False]


def test_a_part_called_none_is_a_town_not_missing(tmp_path):
    """"None" as a part is the town's name; as a whole key, and NaN/None values, it is missing."""
    import gazetteer

    places = tmp_path / "places.csv"
    pd.DataFrame([(44.93645, 7.54015, "None", "Piedmont", "Provincia di Torino", "IT"),
                  (45.07049, 7.68682, "Turin", "Piedmont", "Provincia di Torino", "IT")],
                 columns=["lat", "lon", "name", "admin1", "admin2", "cc"]).to_csv(places,
                                                                                  index=False)
    gz = gazetteer.build(places, boundaries=False)
    town = "None_Provincia di Torino_Piedmont_IT"
    assert town in set(gz.entities["key"])
    parts = pd.DataFrame({"latitude": [44.9, 44.9, 44.9], "longitude": [7.5, 7.5, 7.5],
                          "country": ["IT"] * 3, "region": ["Piedmont"] * 3,
                          "sub-region": ["Provincia di Torino"] * 3,
                          "city": ["None", None, np.nan]})
    ids, _ = entity_ids(gz, parts)
    keys = gz.entities["key"].to_numpy()
    assert keys[ids["city_id"][0]] == town
    assert ids["city_id"].isna().tolist() == [False, True, True]
    whole = pd.DataFrame({"latitude": [44.9, 44.9], "longitude": [7.5, 7.5],
                          "unique_country": ["IT", "IT"],
                          "unique_region": ["Piedmont_IT", "Piedmont_IT"],
                          "unique_sub-region": ["Provincia di Torino_Piedmont_IT"] * 2,
                          "unique_city": [town, "None"]})
    ids, report = entity_ids(gz, whole)
    assert keys[ids["city_id"][0]] == town
    assert report["city"] == {"missing": 1, "unknown": 0}
