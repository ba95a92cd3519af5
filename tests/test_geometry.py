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


# -- matrix forms of the other spaces ----------------------------------------------------
def _space_points(space, n, dim, radius, seed):
    """``n`` points of ``space`` at distance ``radius`` from the ball's origin (before the
    space's own map), in random directions."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, dtype=torch.float64, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * radius / 2
    return space.init_entities(project(expmap0(v)))


def _nudge(space, x, gap, seed):
    """Points ``gap`` (in coordinates) from ``x``, put back on the space."""
    g = torch.Generator().manual_seed(seed)
    y = x + gap * torch.randn(x.shape, dtype=torch.float64, generator=g)
    if space.name == "sphere":
        return y / y.norm(dim=-1, keepdim=True)
    y[:, 0] = (1 / space.c + (y[:, 1:] ** 2).sum(-1)).sqrt()
    return y


def _opposite(space, x):
    """The point through the origin from ``x``: ``-x`` on the sphere, ``(x0, -x)`` on the
    hyperboloid."""
    if space.name == "sphere":
        return -x
    return torch.cat([x[:, :1], -x[:, 1:]], dim=-1)


@pytest.mark.parametrize("name", ["lorentz", "sphere"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("radius", [1e-3, 1.0, 6.0, 11.0])
def test_matrix_equals_pair(name, seed, radius):
    """The matrix form is ``pair`` broadcast: random pairs, near-identical ones (a gap of
    1e-5 and up) and opposite ones, to 1e-9."""
    from hiergeo.geometry.spaces import make_space

    space = make_space(name)
    x = _space_points(space, 40, 8, radius, seed)
    y = _space_points(space, 60, 8, radius * 0.7, seed + 10)
    d = space.matrix(x, y)
    assert d.shape == (40, 60) and d.dtype == torch.float64
    assert (d - space.pair(x[:, None], y[None])).abs().max() < 1e-9
    assert (space.matrix(x, _opposite(space, x)).diagonal()
            - space.pair(x, _opposite(space, x))).abs().max() < (
                1e-9 if name == "lorentz" else 4e-7)
    # near-identical points: both forms get the gap from a difference of products (pair on
    # the hyperboloid too), so a gap g keeps ~1e-16 / g² of relative precision, times x0²
    # on the hyperboloid: 1e-9 holds there only near the origin
    gaps = [1e-3, 1e-5] if name == "sphere" or radius <= 1 else []
    for gap in gaps:
        x2 = _nudge(space, x, gap, seed + 20)
        assert (space.matrix(x, x2).diagonal() - space.pair(x, x2)).abs().max() < 1e-9, gap


@pytest.mark.parametrize("name", ["lorentz", "sphere"])
def test_matrix_at_identical_and_opposite_points(name):
    """Where no matrix form keeps 1e-9 (identical points; antipodes on the sphere), it is
    within float64's square-root-of-epsilon of the exact value."""
    from hiergeo.geometry.spaces import make_space

    space = make_space(name)
    x = _space_points(space, 50, 8, 1.0, 3)
    assert space.matrix(x, x).diagonal().abs().max() < 3e-7
    assert space.pair(x, x).abs().max() < 1e-7
    if name == "sphere":
        far = math.pi * space.radius
        assert (space.matrix(x, -x).diagonal() - far).abs().max() < 4e-7
        assert (space.pair(x, -x) - far).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["lorentz", "sphere"])
@pytest.mark.parametrize("radius", [1e-6, 1.0, 6.0, 11.0])
def test_matrix_and_pair_gradients_are_finite(name, radius):
    """Finite gradients, for both arguments, at random, identical, near-identical and
    opposite points; bounded ones on the sphere, whose distance is 1-Lipschitz per unit of
    chord (2 asin(chord / 2) would give ~1e8 at antipodes)."""
    from hiergeo.geometry.spaces import make_space

    space = make_space(name)
    x = _space_points(space, 6, 5, radius, 4)
    others = [_space_points(space, 6, 5, radius, 5), x.clone(), _nudge(space, x, 1e-9, 6),
              _nudge(space, x, 1e-6, 7), _opposite(space, x)]
    for y in others:
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        for d in (space.matrix(a, b), space.pair(a, b)):
            ga, gb = torch.autograd.grad(d.sum(), (a, b))
            assert torch.isfinite(d).all() and torch.isfinite(ga).all()
            assert torch.isfinite(gb).all()
            if name == "sphere":
                assert ga.abs().max() < 10 * space.radius * len(y)


def test_sphere_distance_keeps_the_asin_form():
    """atan2(|x - y|, |x + y|) is 2 asin(|x - y| / 2) for unit vectors, to rounding."""
    from hiergeo.geometry.spaces import make_space

    space = make_space("sphere")
    x = _space_points(space, 200, 6, 1.0, 8)
    y = _space_points(space, 200, 6, 1.0, 9)
    old = 2 * space.radius * torch.asin(((x - y).norm(dim=-1) / 2).clamp(max=1.0))
    assert (space.pair(x, y) - old).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["poincare", "lorentz", "euclidean", "sphere"])
def test_spaces_as_pytorch_metric_learning_distances(name):
    """SpaceDistance is the space's distance for PML: its matrix equals a plain loop of the
    space's pair distance, and PML's own k-nearest-neighbour search ranks by it."""
    from pytorch_metric_learning.utils.inference import CustomKNN

    from hiergeo.geometry.pml_distance import SpaceDistance
    from hiergeo.geometry.spaces import make_space

    space = make_space(name, 1.0)
    g = torch.Generator().manual_seed(0)
    q = space.query(torch.randn(5, 4, generator=g, dtype=torch.float64))
    r = space.query(torch.randn(7, 4, generator=g, dtype=torch.float64))
    dist_fn = SpaceDistance(space)
    mat = dist_fn(q, r)
    loop = torch.stack([torch.stack([space.pair(q[i], r[j]) for j in range(len(r))])
                        for i in range(len(q))])
    assert torch.allclose(mat, loop, rtol=1e-10, atol=1e-10)
    d, idx = CustomKNN(dist_fn)(q, 3, r, False)
    assert torch.equal(idx, loop.topk(3, dim=1, largest=False).indices)
    sim = SpaceDistance(space, similarity=True)  # -d, larger is closer: the same neighbours
    assert sim.is_inverted and torch.equal(sim(q, r), -mat)
    assert torch.equal(CustomKNN(sim)(q, 3, r, False)[1], idx)
