"""Beam descent and flat search on exact trees, and the geometry spaces they run in."""

import math

import numpy as np
import pytest
import torch

from hiergeo.embedding import embed_tree
from hiergeo.geometry import dist, expmap0, project
from hiergeo.geometry.spaces import SPACES, make_space
from hiergeo.model.hierarchy import Hierarchy
from hiergeo.predict import descend, flat_search

TAUS = [1.0] * 4


def test_descent_recovers_every_leaf_of_a_small_tree(small):
    emb = embed_tree(small, dim=8)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    leaves = hier.level_ids[3]
    p = descend(emb.points[leaves], emb.points, space, hier, TAUS, beams=(1, 1, 1, 1))
    assert (p.paths[:, 0, 3] == leaves.numpy()).all()
    assert (p.paths[:, 0, :] == hier.ancestors[leaves].numpy()).all()


def test_descent_recovers_world_leaves_at_beam_1(world):
    emb = embed_tree(world, dim=16)
    hier = Hierarchy.from_gazetteer(world)
    leaves = hier.level_ids[3][torch.randperm(len(hier.level_ids[3]),
                                              generator=torch.Generator().manual_seed(0))[:3000]]
    p = descend(emb.points[leaves], emb.points, make_space("poincare"), hier, TAUS,
                beams=(1, 1, 1, 1))
    assert (p.paths[:, 0, 3] == leaves.numpy()).all()
    assert p.comparisons.max() < 5000  # a few hundred, not 165k
    # the city's centroid is the predicted point
    ll = hier.latlon[leaves].numpy()
    assert np.allclose(p.lat, ll[:, 0]) and np.allclose(p.lon, ll[:, 1])


def test_wide_beams_equal_flat_search(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    g = torch.Generator().manual_seed(3)
    z = project(expmap0(torch.randn(40, 4, generator=g, dtype=torch.float64) * 2))
    taus = [0.7, 1.3, 0.5, 2.0]
    d = descend(z, emb.points, space, hier, taus, beams=(100, 100, 100, 100), topk=3)
    f = flat_search(z, emb.points, space, hier, taus, topk=3, chunk=7)
    assert (d.paths == f.paths).all()
    assert np.allclose(d.score, f.score) and np.allclose(d.level_prob, f.level_prob)
    # scores are sums of log-probabilities: the best path's equals the sum of its levels'
    assert np.allclose(d.score[:, 0], np.log(d.level_prob[:, 0]).sum(1))


def test_weighted_coordinates_and_confident_level(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    leaf = hier.level_ids[3][:1]
    sharp = descend(emb.points[leaf], emb.points, space, hier, [0.01] * 4, beams=(3,) * 4,
                    coords="weighted")
    assert sharp.confident_level[0] == 3  # a point on the entity: sure at every level
    ll = hier.latlon[leaf].numpy()[0]
    assert abs(sharp.lat[0] - ll[0]) < 1e-6
    vague = descend(torch.zeros(1, 4, dtype=torch.float64), emb.points, space, hier,
                    [50.0] * 4, beams=(3,) * 4, coords="weighted")
    assert vague.confident_level[0] == -1
    with pytest.raises(ValueError, match="coords"):
        descend(emb.points[leaf], emb.points, space, hier, TAUS, coords="centroid")
    with pytest.raises(ValueError, match="temperatures"):
        descend(emb.points[leaf], emb.points, space, hier, [1.0, 1.0])


def test_pruned_hierarchy_never_predicts_inactive(small):
    emb = embed_tree(small, dim=8)
    active = np.zeros(len(small.entities), bool)
    keep = small.entities.index[small.entities["key"].str.endswith("_NZ")
                                & (small.entities["level"] == "city")][0]
    active[keep] = True
    hier = Hierarchy.from_gazetteer(small, active)
    assert [len(x) for x in hier.level_ids] == [1, 1, 1, 1]
    other = Hierarchy.from_gazetteer(small).level_ids[3]
    p = descend(emb.points[other], emb.points, make_space("poincare"), hier, TAUS)
    assert (p.paths[:, 0, 3] == keep).all()


# -- spaces -----------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_lorentz_distances_equal_poincare(c):
    g = torch.Generator().manual_seed(0)
    x = project(expmap0(torch.randn(50, 5, generator=g, dtype=torch.float64) * 3, c), c)
    y = project(expmap0(torch.randn(50, 5, generator=g, dtype=torch.float64) * 3, c), c)
    lor = make_space("lorentz", c)
    got = lor.pair(lor.init_entities(x), lor.init_entities(y))
    assert torch.allclose(got, dist(x, y, c), rtol=1e-9, atol=1e-9)
    # and a Lorentz query lies |v| from the origin, like 2|v| for expmap0 in the ball
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    o = lor.init_entities(torch.zeros(1, 5, dtype=torch.float64))
    assert torch.allclose(lor.pair(lor.query(v), o), v.norm(dim=1), atol=1e-9)


@pytest.mark.parametrize("name", SPACES)
def test_spaces_queries_are_finite_with_gradients(name):
    space = make_space(name)
    v = (torch.randn(6, 4, dtype=torch.float64) * torch.tensor(
        [[1e-12], [1e-3], [1.0], [5.0], [50.0], [1e4]], dtype=torch.float64)).requires_grad_()
    z = space.query(v)
    e = space.init_entities(project(expmap0(torch.randn(9, 4, dtype=torch.float64) * 4)))
    d = space.matrix(z, e)
    assert torch.isfinite(d).all() and (d >= 0).all()
    assert torch.allclose(d, space(z, e.unsqueeze(0).expand(6, -1, -1)), atol=1e-6)
    d.sum().backward()
    assert torch.isfinite(v.grad).all()
    if name == "poincare":
        assert (z.norm(dim=1) < 1).all()
        assert (dist(z, torch.zeros_like(z)) <= space.max_radius + 1e-9).all()


def test_sphere_distance_is_radius_times_angle():
    s = make_space("sphere", sphere_radius=2.0)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert float(s.pair(x, y)) == pytest.approx(2.0 * math.pi / 2)
