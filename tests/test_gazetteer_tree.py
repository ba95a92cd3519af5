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
