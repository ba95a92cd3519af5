"""Dataset labels -> entity ids, and the spatial split."""

import numpy as np
import pandas as pd

from gazetteer.geo import haversine_km
from hiergeo.data.labels import entity_ids
from hiergeo.data.split import near_mask, spatial_split


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


def test_without_label_columns_the_gazetteer_labels(small):
    df = pd.DataFrame({"latitude": [-44.27, float("nan")], "longitude": [171.13, 0.0]})
    ids, report = entity_ids(small, df)
    assert report["source"].startswith("gazetteer.label")
    assert small.entities["key"][ids["country_id"][0]] == "NZ"
    assert ids["country_id"].isna().tolist() == [False, True]
    assert report["country"]["missing"] == 1


def test_spatial_split_keeps_train_1km_from_test():
    rng = np.random.default_rng(0)
    # clusters of nearby photos, as along a street
    centres = rng.uniform([-60, -180], [70, 180], (300, 2))
    pts = np.repeat(centres, 10, axis=0) + rng.normal(0, 0.004, (3000, 2))  # ~400 m spread
    lat, lon = pts[:, 0], pts[:, 1]
    s = spatial_split(lat, lon, test_fraction=0.1, min_km=1.0, seed=1)
    assert len(s["train"]) + len(s["test"]) + len(s["dropped"]) == 3000
    assert len(set(s["train"]) & set(s["test"])) == 0
    assert len(s["dropped"]) > 0
    d = haversine_km(lat[s["train"]][:, None], lon[s["train"]][:, None],
                     lat[s["test"]][None, :], lon[s["test"]][None, :])
    assert d.min() >= 1.0
    # and every dropped row really was within 1 km of a test row
    dd = haversine_km(lat[s["dropped"]][:, None], lon[s["dropped"]][:, None],
                      lat[s["test"]][None, :], lon[s["test"]][None, :])
    assert (dd.min(axis=1) < 1.0 + 1e-6).all()


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
