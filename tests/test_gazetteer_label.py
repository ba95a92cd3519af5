"""Labelling: modes, agreement with reverse_geocoder, bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gazetteer
from gazetteer.keys import make_keys


def test_a_place_labels_as_itself_in_every_mode(world):
    for mode in gazetteer.MODES:
        lab = world.label([-44.26667], [171.13333], mode=mode)
        assert lab["city"][0] == "Pleasant Point_Timaru District_Canterbury_NZ", mode
        assert lab["subregion"][0] == "Timaru District_Canterbury_NZ"
        assert lab["region"][0] == "Canterbury_NZ"
        assert lab["country"][0] == "NZ"


def test_ids_agree_with_keys(world):
    lab = world.label([48.85, 35.68, -33.9], [2.35, 139.69, 18.4])
    keys = world.entities["key"].to_numpy()
    for lvl in gazetteer.LEVELS:
        assert (keys[lab[f"{lvl}_id"].to_numpy(dtype=int)] == lab[lvl].to_numpy()).all()


def test_osv5m_mode_is_flat_nearest_city_is_spherical(small):
    # Just west of the antimeridian: "East" (179.95) is 0.1 deg away on the sphere, but the
    # flat (lat, lon) plane puts it 359.9 deg away, so reverse_geocoder picks "West".
    lat, lon = [-16.80], [-179.99]
    assert small.label(lat, lon, mode="nearest-city")["city"][0].startswith("East")
    assert small.label(lat, lon, mode="osv5m")["city"][0].startswith("West")


def _rg_keys(points):
    import reverse_geocoder as rg

    # default mode (multi-process), as OSV-5M's metric code calls it
    res = rg.search([tuple(p) for p in points], verbose=False)
    df = pd.DataFrame(res)
    return make_keys(df["cc"], df["admin1"], df["admin2"], df["name"])


def test_osv5m_mode_matches_reverse_geocoder(world):
    rng = np.random.default_rng(0)
    places = world.places.sample(3000, random_state=1)
    lat = np.clip(places["lat"].to_numpy() + rng.normal(0, 0.2, 3000), -90, 90)
    lon = places["lon"].to_numpy() + rng.normal(0, 0.2, 3000)
    lon = np.clip(lon, -180, 180)
    # and points at and near places that share their coordinates with another place, where
    # the answer depends on which of the tied places reverse_geocoder's tree visits first
    coords = world.places[["lat", "lon"]]
    tied = coords[coords.duplicated(keep=False)].drop_duplicates()
    assert len(tied) > 100
    tlat = np.r_[tied["lat"].to_numpy(), tied["lat"].to_numpy() + 0.003]
    tlon = np.r_[tied["lon"].to_numpy(), tied["lon"].to_numpy() - 0.002]
    lat, lon = np.r_[lat, tlat], np.r_[lon, tlon]
    ours = world.label(lat, lon, mode="osv5m")
    theirs = _rg_keys(np.column_stack([lat, lon]))
    for lvl in gazetteer.LEVELS:
        same = ours[lvl].to_numpy() == theirs[lvl].to_numpy()
        assert same.mean() >= 0.999, (lvl, same.mean())
        assert same[-len(tlat):].all(), lvl


def test_polygon_mode_follows_the_border(tmp_path):
    """A point just inside country A whose nearest town is across the border in B."""
    import geopandas as gpd
    from shapely.geometry import box

    places = pd.DataFrame(
        [(0.5, 0.2, "FarA", "A1", "", "AA"), (0.5, 0.9, "NearA", "A1", "", "AA"),
         (0.5, 1.05, "BorderB", "B1", "", "BB"), (0.5, 1.8, "FarB", "B1", "", "BB")],
        columns=["lat", "lon", "name", "admin1", "admin2", "cc"])
    pcsv = tmp_path / "p.csv"
    places.to_csv(pcsv, index=False)
    # another boundary file with its own column names: only the mapping changes
    gpkg = tmp_path / "b.gpkg"
    cols = {"ISO": ["AA", "BB"], "label": ["A", "B"]}
    geoms = [box(0, 0, 1, 1), box(1, 0, 2, 1)]
    gpd.GeoDataFrame(cols, geometry=geoms, crs="EPSG:4326").to_file(gpkg, layer="adm0")
    gpd.GeoDataFrame(cols, geometry=geoms, crs="EPSG:4326").to_file(gpkg, layer="adm1")
    src = gazetteer.BoundarySource(gpkg, "adm0", "adm1", code_field="ISO", name_field="label")
    gz = gazetteer.build(pcsv, boundaries=src)
    assert gz.entities.set_index("key").loc[["AA", "BB", "A1_AA", "B1_BB"], "has_polygon"].all()
    lat, lon = [0.5], [0.99]
    assert gz.label(lat, lon, mode="nearest-city")["country"][0] == "BB"
    poly = gz.label(lat, lon, mode="polygon")
    assert poly["country"][0] == "AA" and poly["city"][0] == "NearA__A1_AA"
    # off the coast, within the fallback distance: the nearest polygon
    assert gz.label([0.5], [-0.1], mode="polygon")["country"][0] == "AA"


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lat,lon,field,value", [
    ([0.0, float("nan")], [0.0, 0.0], "latitude", "nan"),
    ([0.0, 0.0], [0.0, float("inf")], "longitude", "inf"),
    ([0.0, 91.0], [0.0, 0.0], "latitude", "91.0"),
    ([0.0, -90.5], [0.0, 0.0], "latitude", "-90.5"),
])
def test_invalid_coordinates_raise_naming_row_and_field(small, lat, lon, field, value):
    # the value as the user wrote it, not numpy's repr (np.float64(91.0))
    with pytest.raises(gazetteer.InputError, match=rf"row 1 field '{field}' = {value} is "):
        small.label(lat, lon)


def test_invalid_coordinates_can_be_masked(small, caplog):
    lab = small.label([-44.27, float("nan"), 95.0], [171.13, 0.0, 0.0], on_invalid="mask")
    assert lab["country"].isna().tolist() == [False, True, True]
    assert lab["city_id"].isna().tolist() == [False, True, True]
    assert "masked 2 of 3" in caplog.text


def test_longitudes_are_wrapped(world):
    a = world.label([61.2, -16.8], [-149.9, 178.0])
    b = world.label([61.2, -16.8], [210.1, -182.0])
    pd.testing.assert_frame_equal(a, b)


def test_empty_input_gives_empty_output(small):
    for mode in ("nearest-city", "osv5m"):
        lab = small.label([], [], mode=mode)
        assert len(lab) == 0
        assert list(lab.columns) == ["country", "region", "subregion", "city",
                                     "country_id", "region_id", "subregion_id", "city_id"]


def test_unknown_mode(small):
    with pytest.raises(ValueError, match="mode must be one of"):
        small.label([0], [0], mode="kdtree")


def test_places_csv_missing_columns(tmp_path):
    p = tmp_path / "bad.csv"
    pd.DataFrame({"lat": [1.0], "lon": [2.0], "name": ["x"]}).to_csv(p, index=False)
    with pytest.raises(gazetteer.InputError, match=r"bad.csv.*lacks column"):
        gazetteer.build(p, boundaries=False)


def test_places_csv_bad_latitude(tmp_path):
    p = tmp_path / "bad.csv"
    pd.DataFrame({"lat": [1.0, 100.0], "lon": [2.0, 3.0], "name": ["x", "y"], "admin1": "",
                  "admin2": "", "cc": "FR"}).to_csv(p, index=False)
    with pytest.raises(gazetteer.InputError, match=r"bad.csv: row 1 field 'lat'"):
        gazetteer.build(p, boundaries=False)


SHARED_OSV5M = Path(__file__).resolve().parents[1].parent / "shared" / "images" / "osv5m"


@pytest.mark.skipif(not (SHARED_OSV5M / "labels.csv").exists(),
                    reason="../shared/images/osv5m not present")
def test_osv5m_mode_reproduces_real_osv5m_labels(world):
    df = pd.read_csv(SHARED_OSV5M / "labels.csv", dtype=str, keep_default_na=False)
    lab = world.label(df["latitude"].astype(float), df["longitude"].astype(float), mode="osv5m")
    truth = make_keys(df["country"], df["region"], df["sub-region"], df["city"])
    for lvl in gazetteer.LEVELS:
        assert lab[lvl].astype(str).tolist() == truth[lvl].tolist(), lvl


def test_a_town_called_none_keeps_its_name(world):
    """GeoNames has a town called "None" (Piedmont, IT): it is a name, not a missing part."""
    from gazetteer.sources import rg_places_path

    raw = pd.read_csv(rg_places_path(), dtype=str, keep_default_na=False, encoding="utf-8")
    town = raw[raw["name"] == "None"]
    assert len(town) == 1
    lat, lon = float(town["lat"].iloc[0]), float(town["lon"].iloc[0])
    ours = world.label([lat], [lon], mode="osv5m")
    theirs = _rg_keys([(lat, lon)])
    for lvl in gazetteer.LEVELS:
        assert ours[lvl].astype(str)[0] == theirs[lvl][0], lvl
    assert ours["city"].astype(str)[0].startswith("None_")
    assert world.entities.loc[int(ours["city_id"][0]), "name"] == "None"
