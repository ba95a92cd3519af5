"""Property tests (hypothesis): what examples miss. Distances in the ball are symmetric and
obey the triangle inequality up to its edge, the exponential and logarithmic maps invert each
other there, longitudes wrap into range, and the one haversine agrees with the chord formula
and with itself in torch."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gazetteer.geo import EARTH_RADIUS_KM, chord_to_km, haversine_km, to_xyz, wrap_lon
from hiergeo.geometry import dist, dist0
from hiergeo.geometry.constants import max_dist0
from hiergeo.geometry.poincare import expmap0, logmap0

SETTINGS = settings(max_examples=150, deadline=None)
CURVATURES = st.floats(0.25, 4.0)


@st.composite
def ball_points(draw, n: int = 3, dim: int | None = None):
    """``n`` float64 points of one ball (curvature ``c``), from the origin up to the furthest
    distance float64 allows (``max_dist0``): ``(points [n, dim], c)``."""
    c = draw(CURVATURES)
    dim = dim or draw(st.integers(2, 8))
    far = max_dist0(torch.float64, c)
    pts = []
    for _ in range(n):
        direction = draw(st.lists(st.floats(-1, 1), min_size=dim, max_size=dim).filter(
            lambda v: math.hypot(*v) > 1e-3))
        r = draw(st.floats(0.0, far))  # distance from the origin
        u = torch.tensor(direction, dtype=torch.float64)
        pts.append(expmap0(u / u.norm() * (r / 2), c))  # dist0(expmap0(v)) = 2 |v|
    return torch.stack(pts), c


@SETTINGS
@given(ball_points())
def test_distance_is_symmetric_and_obeys_the_triangle_inequality(pc):
    (x, y, z), c = pc
    dxy, dyx = dist(x, y, c), dist(y, x, c)
    assert torch.allclose(dxy, dyx, rtol=1e-12, atol=1e-12)
    dxz, dyz = dist(x, z, c), dist(y, z, c)
    slack = 1e-7 * (dxy + dyz) + 1e-7  # float64 near the edge: 1 - c|x|^2 ~ 1e-5
    assert dxz <= dxy + dyz + slack
    assert dist(x, x, c) < 1e-6
    assert torch.allclose(dist(x, torch.zeros_like(x), c), dist0(x, c), rtol=1e-9, atol=1e-9)


@SETTINGS
@given(CURVATURES, st.lists(st.floats(-1, 1), min_size=2, max_size=8).filter(
    lambda v: math.hypot(*v) > 1e-3), st.floats(1e-6, 0.99))
def test_logmap0_inverts_expmap0_up_to_the_edge(c, direction, share):
    u = torch.tensor(direction, dtype=torch.float64)
    v = u / u.norm() * share * max_dist0(torch.float64, c) / 2
    assert torch.allclose(logmap0(expmap0(v, c), c), v, rtol=1e-6, atol=1e-12)


@SETTINGS
@given(st.floats(-1e5, 1e5))
def test_longitudes_wrap_into_range_and_stay_congruent(lon):
    w = float(wrap_lon(np.array([lon]))[0])
    assert -180.0 <= w <= 180.0
    assert math.isclose(math.remainder(w - lon, 360.0), 0.0, abs_tol=1e-7)
    assert float(wrap_lon(np.array([w]))[0]) == w
    if -180 <= lon <= 180:
        assert w == lon  # already inside: unchanged


@SETTINGS
@given(st.floats(-90, 90), st.floats(-180, 180), st.floats(-90, 90), st.floats(-180, 180))
def test_haversine_agrees_with_the_chord_and_in_torch(lat1, lon1, lat2, lon2):
    """The one haversine against an independent formula (the chord between unit vectors)
    and itself in torch; symmetric, 0 on one point, at most half the circumference."""
    km = float(haversine_km(lat1, lon1, lat2, lon2))
    chord = np.linalg.norm(to_xyz([lat1], [lon1])[0] - to_xyz([lat2], [lon2])[0])
    assert math.isclose(km, float(chord_to_km(chord)), rel_tol=1e-9, abs_tol=1e-6)
    back = float(haversine_km(lat2, lon2, lat1, lon1))
    t = float(haversine_km(*(torch.tensor(v, dtype=torch.float64)
                             for v in (lat1, lon1, lat2, lon2)), xp=torch))
    assert 0.0 <= km <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert math.isclose(km, back, rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(km, t, rel_tol=1e-12, abs_tol=1e-9)
    assert float(haversine_km(lat1, lon1, lat1, lon1)) == 0.0
