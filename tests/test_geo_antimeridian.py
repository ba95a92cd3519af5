"""Longitudes across the antimeridian drawn in one piece (gazetteer.geo.unwrap_lon)."""

import numpy as np
import pytest

from gazetteer.geo import lon_window, unwrap_lon

# New Zealand: the main islands (172..178.6 E) and the Chatham Islands (176.6 W)
NZ = np.array([172.63, 174.78, 175.28, 178.0, 178.57, -176.56, -176.2])


def span(lon):
    return float(np.ptp(lon))


def test_a_country_across_the_antimeridian_becomes_compact():
    assert span(NZ) > 350                              # stretched over the whole map
    assert lon_window(NZ) == 0.0
    out = unwrap_lon(NZ)
    assert span(out) < 20
    assert out[NZ > 0] == pytest.approx(NZ[NZ > 0])    # the east side stays where it was
    assert out[-2] == pytest.approx(183.44)            # Chatham: -176.56 + 360
    assert ((out >= 0) & (out < 360)).all()


@pytest.mark.parametrize("lon", [
    [5.93, 14.99, 8.5, 6.1],          # Germany
    [-4.77, 9.52, 2.35, -1.5],        # France, across Greenwich: [0, 360) would split it
    [-166.5, -67.0, -122.4],          # the USA's cities (Alaska to Maine)
    [-172.8, -171.4, -172.0],         # Samoa, beside the antimeridian: a tie keeps it
])
def test_a_country_not_crossing_is_unchanged(lon):
    lon = np.array(lon)
    assert lon_window(lon) == -180.0
    np.testing.assert_array_equal(unwrap_lon(lon), lon)


def test_both_sides_of_180_join():
    fiji = np.array([177.05, 179.38, 180.0, -180.0, -179.9])
    out = unwrap_lon(fiji)
    assert span(out) < 3.5
    assert out[2] == out[3] == 180.0


def test_empty_input():
    assert lon_window([]) == -180.0
    out = unwrap_lon(np.array([]))
    assert out.shape == (0,) and out.dtype == np.float64


def test_nans_are_ignored_and_kept():
    lon = np.array([178.0, np.nan, -179.0])
    assert lon_window(lon) == 0.0
    out = unwrap_lon(lon)
    assert np.isnan(out[1]) and span(out[[0, 2]]) == pytest.approx(3.0)


def test_one_window_aligns_every_layer_of_a_map():
    start = lon_window(NZ)
    labels = np.array([174.0, -176.5])                 # drawn on the same map as NZ
    np.testing.assert_allclose(unwrap_lon(labels, start), [174.0, 183.5])
    with pytest.raises(ValueError, match="start"):
        unwrap_lon(labels, 90.0)


def test_the_window_is_the_narrower_of_the_two_by_a_plain_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lon = rng.uniform(-180, 180, rng.integers(1, 6))
        if rng.random() < 0.5:                          # a cluster around some meridian
            lon = (rng.uniform(-180, 180) + rng.uniform(-15, 15, len(lon)) + 180) % 360 - 180
        widths = {-180.0: max(lon) - min(lon),
                  0.0: max(v % 360 for v in lon) - min(v % 360 for v in lon)}
        best = 0.0 if widths[0.0] < widths[-180.0] else -180.0
        assert lon_window(lon) == best
        assert span(unwrap_lon(lon)) == pytest.approx(widths[best])
