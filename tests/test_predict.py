"""Beam descent and flat search on exact trees, and the geometry spaces they run in."""

import math

import numpy as np
import pytest
import torch

from hiergeo.embedding import embed_tree
from hiergeo.geometry import dist, expmap0, project
from hiergeo.geometry.spaces import SPACES, make_space
from hiergeo.model.hierarchy import Hierarchy
from hiergeo.predict import Search, descend, flat_search

TAUS = [1.0] * 4


def _random_queries(n, dim=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return project(expmap0(torch.randn(n, dim, generator=g, dtype=torch.float64) * 2))


def test_descent_recovers_every_leaf_of_a_small_tree(small):
    emb = embed_tree(small, dim=8)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    leaves = hier.level_ids[3]
    p = descend(emb.points[leaves], emb.points, space, hier, TAUS, Search(beams=(1, 1, 1, 1)))
    assert (p.paths[:, 0, 3] == leaves.numpy()).all()
    assert (p.paths[:, 0, :] == hier.ancestors[leaves].numpy()).all()


def test_descent_recovers_world_leaves_at_beam_1(world):
    emb = embed_tree(world, dim=16)
    hier = Hierarchy.from_gazetteer(world)
    leaves = hier.level_ids[3][torch.randperm(len(hier.level_ids[3]),
                                              generator=torch.Generator().manual_seed(0))[:3000]]
    p = descend(emb.points[leaves], emb.points, make_space("poincare"), hier, TAUS,
                Search(beams=(1, 1, 1, 1)))
    assert (p.paths[:, 0, 3] == leaves.numpy()).all()
    assert p.comparisons.max() < 5000  # a few hundred, not 165k
    # the city's prediction point (a place of its own, not its centroid) is the predicted point
    ll = hier.point_latlon[leaves].numpy()
    assert np.allclose(p.lat, ll[:, 0]) and np.allclose(p.lon, ll[:, 1])


def test_wide_beams_equal_flat_search(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    z = _random_queries(40)
    taus = [0.7, 1.3, 0.5, 2.0]
    d = descend(z, emb.points, space, hier, taus, Search(beams=(100, 100, 100, 100), topk=3))
    f = flat_search(z, emb.points, space, hier, taus, Search(topk=3), chunk=7)
    assert (d.paths == f.paths).all()
    assert np.allclose(d.score, f.score) and np.allclose(d.level_prob, f.level_prob)
    # scores are sums of log-probabilities: the best path's equals the sum of its levels'
    assert np.allclose(d.score[:, 0], np.log(d.level_prob[:, 0]).sum(1))


def test_per_level_queries_score_each_level_with_its_own_point(small):
    """A [B, 4, D] query scores level l with its l-th point: four copies of one point give
    that point's answer, and replacing only the city point changes only the city level."""
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    z = _random_queries(30, seed=5)
    taus = [0.7, 1.3, 0.5, 2.0]
    wide = (100, 100, 100, 100)
    one = descend(z, emb.points, space, hier, taus, Search(beams=wide, topk=3))
    four = descend(z[:, None].expand(-1, 4, -1), emb.points, space, hier, taus,
                   Search(beams=wide, topk=3))
    assert (one.paths == four.paths).all() and np.allclose(one.score, four.score)
    # the leaves' own points as city queries: every path above the city keeps its
    # conditional probabilities, the city's are those of the new point
    leaves = hier.level_ids[3][torch.arange(30) % len(hier.level_ids[3])]
    mixed = z[:, None].repeat(1, 4, 1)
    mixed[:, 3] = emb.points[leaves]
    f_mixed = flat_search(mixed, emb.points, space, hier, taus, Search(topk=3))
    d_mixed = descend(mixed, emb.points, space, hier, taus, Search(beams=wide, topk=3))
    assert (f_mixed.paths == d_mixed.paths).all()
    assert np.allclose(f_mixed.level_prob, d_mixed.level_prob)
    f_one = flat_search(z, emb.points, space, hier, taus, Search(topk=len(hier.level_ids[3])))
    for i in range(5):  # the country probability of the best path is the shared point's
        c = d_mixed.paths[i, 0, 0]
        k = int(np.flatnonzero(f_one.paths[i, :, 0] == c)[0])
        assert np.isclose(d_mixed.level_prob[i, 0, 0], f_one.level_prob[i, k, 0])
    assert not np.allclose(d_mixed.level_prob[..., 3], one.level_prob[..., 3])


def test_weighted_coordinates_and_confident_level(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    leaf = hier.level_ids[3][:1]
    sharp = descend(emb.points[leaf], emb.points, space, hier, [0.01] * 4,
                    Search(beams=(3,) * 4, coords="weighted"))
    assert sharp.confident_level[0] == 3  # a point on the entity: sure at every level
    ll = hier.point_latlon[leaf].numpy()[0]
    assert abs(sharp.lat[0] - ll[0]) < 1e-6
    vague = descend(torch.zeros(1, 4, dtype=torch.float64), emb.points, space, hier, [50.0] * 4,
                    Search(beams=(3,) * 4, coords="weighted"))
    assert vague.confident_level[0] == -1
    with pytest.raises(ValueError, match="coords"):
        descend(emb.points[leaf], emb.points, space, hier, TAUS, Search(coords="centroid"))
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


def _same_path(pred, i, path):
    """Row of ``path`` among query ``i``'s paths in ``pred`` (it must be there)."""
    rows = np.flatnonzero((pred.paths[i] == path).all(1))
    assert len(rows) == 1, (i, path)
    return rows[0]


def test_path_probabilities_do_not_depend_on_beam_width(small):
    """P(entity | parent) and the joint score of a path are the same whichever beams found it,
    and equal flat search's."""
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    z = _random_queries(40)
    taus = [0.7, 1.3, 0.5, 2.0]
    n_paths = len(hier.level_ids[3])  # every path of the small tree ends in a city
    wide = descend(z, emb.points, space, hier, taus, Search(beams=(100,) * 4, topk=100))
    flat = flat_search(z, emb.points, space, hier, taus, Search(topk=100), chunk=7)
    assert wide.paths.shape[1] == flat.paths.shape[1] == n_paths
    assert (wide.paths == flat.paths).all()
    assert np.abs(wide.score - flat.score).max() < 1e-12
    assert np.abs(wide.level_prob - flat.level_prob).max() < 1e-12
    # joint probabilities of all paths sum to one; a score is the log of its path's joint
    assert np.allclose(np.exp(wide.score).sum(1), 1.0, atol=1e-12)
    assert np.allclose(wide.score, np.log(wide.level_prob).sum(2), atol=1e-12)
    assert np.allclose(wide.path_prob[..., -1], np.exp(wide.score), atol=1e-12)
    compared = 0
    for b in (1, 3):
        d = descend(z, emb.points, space, hier, taus, Search(beams=(b,) * 4, topk=3))
        for i in range(len(z)):
            for k in np.flatnonzero(np.isfinite(d.score[i])):
                j = _same_path(wide, i, d.paths[i, k])
                assert abs(d.score[i, k] - wide.score[i, j]) < 1e-12
                assert np.abs(d.level_prob[i, k] - wide.level_prob[i, j]).max() < 1e-12
                compared += 1
    assert compared >= 40 * (1 + 3)


def test_level_probability_is_conditional_on_the_parent(small):
    """Against a plain loop: softmax over all countries, then over each parent's children."""
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    z = _random_queries(5, seed=7)
    taus = [0.7, 1.3, 0.5, 2.0]
    p = descend(z, emb.points, space, hier, taus, Search(beams=(2, 2, 2, 2), topk=2))
    parent = hier.parent.numpy()
    pts = emb.points
    for i in range(len(z)):
        for k in range(p.paths.shape[1]):
            for lvl, e in enumerate(p.paths[i, k]):
                sibs = (hier.level_ids[0].numpy() if lvl == 0 else
                        np.flatnonzero(parent == parent[e]))
                logit = [-float(dist(z[i], pts[s])) / taus[lvl] for s in sibs]
                want = math.exp(logit[list(sibs).index(e)]) / sum(math.exp(v) for v in logit)
                assert p.level_prob[i, k, lvl] == pytest.approx(want, abs=1e-12)


def test_confident_level_uses_the_joint_prefix_probability(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    z = _random_queries(200, seed=11)
    p = descend(z, emb.points, make_space("poincare"), hier, [0.3] * 4, Search(beams=(3,) * 4))
    prefix = p.path_prob[:, 0, :]
    assert np.allclose(prefix, np.exp(np.cumsum(np.log(p.level_prob[:, 0, :]), axis=1)))
    want = (prefix >= 0.5).sum(1) - 1  # the prefix probability only falls with depth
    assert (p.confident_level == want).all()
    # and the test means something: somewhere every level's own probability clears 0.5 but
    # the joint does not
    per_level = np.cumprod(p.level_prob[:, 0, :] >= 0.5, axis=1).sum(1) - 1
    assert (per_level > want).any()


def _pruned(small, keys):
    active = small.entities["key"].isin(keys).to_numpy()
    return Hierarchy.from_gazetteer(small, active)


@pytest.mark.parametrize("coords", ["city", "weighted"])
def test_a_path_stops_where_its_entity_has_no_active_children(small, coords):
    """Japan is active without any active region; Namibia's Khomas without a subregion. Their
    paths stop there: deeper levels -1 with probability 0, coordinates from the deepest
    entity, and never the root (entity 0)."""
    emb = embed_tree(small, dim=8)
    hier = _pruned(small, ["JP", "Khomas_NA", "Timaru_Timaru District_Canterbury_NZ"])
    assert [len(x) for x in hier.level_ids] == [3, 2, 1, 1]
    space = make_space("poincare")
    jp, khomas = small.id_of("JP"), small.id_of("Khomas_NA")
    z = emb.points[[jp, khomas]]
    for beams in [(1, 1, 1, 1), (3, 3, 3, 3)]:
        p = descend(z, emb.points, space, hier, [0.05] * 4,
                    Search(beams=beams, topk=3, coords=coords))
        f = flat_search(z, emb.points, space, hier, [0.05] * 4, Search(topk=3, coords=coords))
        for pred in (p, f):
            assert pred.paths[0, 0].tolist() == [jp, -1, -1, -1]
            assert pred.paths[1, 0].tolist() == [small.id_of("NA"), khomas, -1, -1]
            assert (pred.level_prob[0, 0, 1:] == 0).all() and pred.level_prob[0, 0, 0] > 0.99
            assert (pred.level_prob[1, 0, 2:] == 0).all()
            # the score is the joint probability of the prefix down to the stop
            assert pred.score[0, 0] == pytest.approx(np.log(pred.level_prob[0, 0, 0]))
            assert pred.score[1, 0] == pytest.approx(np.log(pred.level_prob[1, 0, :2]).sum())
            assert not (pred.paths == 0).any()
            assert pred.confident_level[0] == 0 and pred.confident_level[1] == 1
        ll = hier.point_latlon[[jp, khomas]].numpy()
        assert np.allclose(p.lat, ll[:, 0], atol=1e-3) and np.allclose(p.lon, ll[:, 1], atol=1e-3)
    # a region of a stopped country is never invented: beams of one that all stop still
    # give the stopped path, not entity 0
    only_jp = _pruned(small, ["JP"])
    p = descend(emb.points[[jp]], emb.points, space, only_jp, TAUS, Search(beams=(1, 1, 1, 1)))
    assert p.paths[0].tolist() == [[jp, -1, -1, -1]]
    assert p.score[0, 0] == 0.0 and p.level_prob[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


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
