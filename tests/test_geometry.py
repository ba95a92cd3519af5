"""Poincaré-ball functions: agreement with geoopt, isometries, finite gradients."""

import math

import pytest
import torch

from hiergeo.geometry import (
    dist,
    dist0,
    dist_matrix,
    expmap0,
    logmap0,
    make_ball,
    max_dist0,
    mobius_add,
    project,
)


def _points(n, dim, c, max_d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, dtype=dtype, generator=g)
    r = torch.rand(n, 1, dtype=dtype, generator=g) * max_d
    v = v / v.norm(dim=-1, keepdim=True) * r / 2  # expmap0(v) lies 2|v| from the origin
    return project(expmap0(v, c), c)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_dist_matches_geoopt(c, seed):
    ball = make_ball(c)
    x = _points(4000, 16, c, 11.0 / math.sqrt(c), seed)
    y = _points(4000, 16, c, 11.0 / math.sqrt(c), seed + 10)
    ours, theirs = dist(x, y, c), ball.dist(x, y)
    # geoopt clamps artanh at 1 - 1e-7: compare where it is not saturated
    ok = ours < 12.0 / math.sqrt(c)
    assert ok.float().mean() > 0.5
    assert (ours - theirs)[ok].abs().max() < 1e-9
    assert (dist0(x, c) - ball.dist0(x)).abs().max() < 1e-9
    assert (dist_matrix(x[:50], y[:50], c).diagonal() - ours[:50]).abs().max() < 1e-9


def test_geoopt_saturates_where_hiergeo_does_not():
    """Why hiergeo has its own distance: two points 11 from the origin on opposite sides."""
    x = project(expmap0(torch.tensor([[5.5, 0.0]], dtype=torch.float64)))
    y = -x
    assert dist(x, y).item() == pytest.approx(22.0, abs=1e-6)
    assert make_ball(1.0).dist(x, y).item() < 17.0


def test_mobius_translation_is_an_isometry():
    x = _points(1, 8, 1.0, 11.5, 3)  # near the edge
    a, b = _points(100, 8, 1.0, 3.0, 4), _points(100, 8, 1.0, 3.0, 5)
    d_before = dist(a, b)
    d_after = dist(mobius_add(x, a), mobius_add(x, b))
    assert (d_before - d_after).abs().max() < 1e-7
    assert (dist(x, mobius_add(x, a)) - dist0(a)).abs().max() < 1e-7


def test_expmap_logmap_round_trip():
    v = torch.randn(50, 5, dtype=torch.float64)
    assert torch.allclose(logmap0(expmap0(v, 2.0), 2.0), v, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_from_origin_to_edge(dtype):
    c = 1.0
    edge = (1 - 1e-9) * max_dist0(dtype, c)
    radii = torch.tensor([0.0, 1e-15, 1e-8, 1e-3, 1.0, 3.0, 6.0, edge], dtype=dtype)
    radii = radii[radii <= edge]
    direction = torch.nn.functional.normalize(torch.ones(len(radii), 4, dtype=dtype), dim=-1)
    x = project(expmap0(direction * radii[:, None] / 2, c), c).detach().requires_grad_(True)
    y = project(expmap0(-direction * radii.flip(0)[:, None] / 2, c), c).detach()
    for loss in (dist(x, y, c).sum(), dist(x, x.detach(), c).sum(), dist0(x, c).sum(),
                 dist_matrix(x, y, c).sum(), logmap0(x, c).sum()):
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all(), loss
    assert torch.isfinite(dist(x, y, c)).all()


def test_project_keeps_points_inside():
    x = torch.tensor([[2.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
    p = project(x, 1.0)
    assert p[0].norm() == pytest.approx(1 - 1e-5)
    assert torch.equal(p[1], x[1])


def test_bad_curvature():
    with pytest.raises(ValueError, match="positive"):
        make_ball(-1.0)
