"""The retrieval memory mixed into beam descent (hiergeo.predict.memory)."""

import json

import numpy as np
import torch

from hiergeo.embedding import embed_tree
from hiergeo.geometry import expmap0, project
from hiergeo.geometry.spaces import make_space
from hiergeo.model.hierarchy import Hierarchy
from hiergeo.predict import MemoryMix, Search, descend
from hiergeo.predict.memory import Memory, Neighbours, memory_conditional, mix_log_prob

TAUS = [0.7, 1.3, 0.5, 2.0]


def _setup(small, n_mem=60, n_q=25, seed=0):
    """A small tree, random queries, and a memory of random leaves with random features."""
    g = torch.Generator().manual_seed(seed)
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    leaves = hier.level_ids[3][torch.randint(len(hier.level_ids[3]), (n_mem,), generator=g)]
    mem = Memory(torch.randn(n_mem, 6, generator=g), hier.ancestors[leaves], k=7,
                 temperature=0.3)
    z = project(expmap0(torch.randn(n_q, 4, generator=g, dtype=torch.float64) * 2))
    f = torch.randn(n_q, 6, generator=g)
    return emb, hier, mem, z, f


def test_search_finds_a_stored_sample_first():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g)
    ids = torch.arange(200).reshape(50, 4)
    nb = Memory(x, ids, k=3, temperature=0.1).search(x[[4, 17]] * 3.0)  # scale: cosine
    assert nb.ids[:, 0].tolist() == [ids[4].tolist(), ids[17].tolist()]
    assert torch.allclose(nb.weight[:, 0], torch.ones(2, dtype=torch.float64))
    assert (nb.weight[:, 1:] < 1).all() and (nb.weight > 0).all()


def test_memory_conditional_is_a_distribution_over_the_children(small):
    _, hier, mem, _, f = _setup(small)
    nb = mem.search(f)
    for lvl in range(4):
        parents = (torch.zeros(1, dtype=torch.long) if lvl == 0 else hier.level_ids[lvl - 1])
        for qi in range(len(f)):
            for p in parents.tolist():
                kids = (hier.level_ids[0] if lvl == 0 else hier.child_list[
                    hier.child_start[p]:hier.child_start[p] + hier.child_count[p]])
                if len(kids) == 0:
                    continue
                pm = memory_conditional(nb, torch.full((len(kids),), qi), kids, lvl, hier)
                under = (nb.ids[qi, :, lvl] >= 0) if lvl == 0 else (nb.ids[qi, :, lvl - 1] == p)
                if bool(under.any()):
                    assert torch.isclose(pm.sum(), torch.tensor(1.0, dtype=torch.float64))
                    # by hand: the weight of the neighbours labelled each child
                    w = nb.weight[qi]
                    want = torch.stack([(w * (nb.ids[qi, :, lvl] == k)).sum() for k in kids])
                    assert torch.allclose(pm, want / (w * under).sum())
                else:
                    assert torch.isnan(pm).all()


def test_mix_log_prob():
    lp = torch.log(torch.tensor([0.2, 0.8], dtype=torch.float64))
    pm = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    out = mix_log_prob(lp, pm, 0.25).exp()
    assert torch.allclose(out, torch.tensor([0.75 * 0.2 + 0.25, 0.8], dtype=torch.float64))
    assert torch.equal(mix_log_prob(lp, pm, 0.0), lp)


def test_descent_with_memory(small):
    """Weight 0 is the model alone; with weights, a path's probabilities do not depend on the
    beam width, each level's are the mixture of the model's and the memory's, and a strong
    memory decides."""
    emb, hier, mem, z, f = _setup(small)
    space = make_space("poincare")
    nb = mem.search(f)
    alone = descend(z, emb.points, space, hier, TAUS, Search(beams=(3, 3, 3, 3), topk=3))
    zero = descend(z, emb.points, space, hier, TAUS, Search(beams=(3, 3, 3, 3), topk=3),
                   mix=MemoryMix(nb, [0.0] * 4))
    assert np.array_equal(alone.paths, zero.paths) and np.allclose(alone.score, zero.score)
    a, mt = [0.3, 0.5, 0.2, 0.6], [1.0, 0.7, 1.5, 1.0]
    wide = descend(z, emb.points, space, hier, TAUS, Search(beams=(50,) * 4, topk=50),
                   mix=MemoryMix(nb, a, mt))
    narrow = descend(z, emb.points, space, hier, TAUS, Search(beams=(2, 2, 2, 2), topk=2),
                     mix=MemoryMix(nb, a, mt))
    for i in range(len(z)):
        paths = [tuple(p) for p in wide.paths[i]]
        for k in range(2):
            j = paths.index(tuple(narrow.paths[i, k]))
            assert np.allclose(narrow.level_prob[i, k], wide.level_prob[i, j])
            assert np.isclose(narrow.score[i, k], wide.score[i, j])
            for lvl in range(4):
                e = int(narrow.paths[i, k, lvl])
                if e < 0:
                    continue
                # by hand, over e's siblings: the mixture, to the power 1/T', renormalised
                sibs = (hier.level_ids[0] if lvl == 0 else hier.child_list[
                    hier.child_start[hier.parent[e]]:hier.child_start[hier.parent[e]]
                    + hier.child_count[hier.parent[e]]])
                zq = z[i].expand(len(sibs), -1)
                pmod = torch.softmax(-space.pair(zq, emb.points[sibs]) / TAUS[lvl], 0)
                pm = memory_conditional(nb, torch.full((len(sibs),), i), sibs, lvl, hier)
                # (a group where no neighbour lies under the parent keeps the model's)
                mix = (1 - a[lvl]) * pmod + a[lvl] * pm
                want = (pmod if bool(torch.isnan(pm).all())
                        else mix ** (1 / mt[lvl]) / (mix ** (1 / mt[lvl])).sum())
                assert np.isclose(narrow.level_prob[i, k, lvl], float(want[sibs == e][0]))
    # a memory whose neighbours all name one path, at weight near 1, predicts that path
    path = hier.ancestors[hier.level_ids[3][0]]
    sure = Neighbours(path.expand(len(z), 3, 4).clone(), torch.ones(len(z), 3,
                                                                    dtype=torch.float64))
    got = descend(z, emb.points, space, hier, TAUS, Search(beams=(1, 1, 1, 1), topk=1),
                  mix=MemoryMix(sure, [0.999] * 4))
    assert (got.paths[:, 0] == path.numpy()).all()


def test_a_run_fits_its_memory_and_evaluate_uses_it(smoke_run, cache_env):
    """The smoke run stores its memory weights; load_run + the run's memory reproduce its
    validation metrics, and the model alone scores differently."""
    from hiergeo.data.splits import load_data
    from hiergeo.evaluate import build_memory, evaluate_split, load_run

    run_dir, res = smoke_run
    cal = json.loads((run_dir / "calibration.json").read_text())
    cfg, model, hier, gz = load_run(run_dir)
    levels = ("country", "region", "subregion", "city")
    fit = cal["memory"]
    assert model.memory_weight.tolist() == [fit[lvl]["a"] for lvl in levels]
    assert model.mixture_temperature.tolist() == [fit[lvl]["T"] for lvl in levels]
    assert max(model.memory_weight.tolist()) > 0
    # the weight is the grid's best for the accuracy given the parent, never worse than none
    assert all(fit[lvl]["accuracy"] >= fit[lvl]["accuracy_model"] for lvl in levels)
    data = load_data(cfg, gz)
    mem = build_memory(cfg, data.train)
    again = evaluate_split(model, hier, data.val, cfg, gz, run_dir / "again", memory=mem)
    assert again["geoscore"] == res["geoscore"]
    alone = evaluate_split(model, hier, data.val, cfg, gz, run_dir / "alone")
    assert alone["geoscore"] != res["geoscore"]


def test_neighbours_without_a_label_or_with_an_inactive_one_do_not_vote(small):
    """A neighbour with no entity at the level (-1), or one naming an entity outside the
    (pruned) hierarchy, is left out of numerator and denominator alike."""
    hier_all = Hierarchy.from_gazetteer(small)
    cities = hier_all.level_ids[3]
    sub = hier_all.ancestors[cities][:, 2]
    pair = next(cities[sub == s] for s in sub.unique() if (sub == s).sum() >= 2)
    city = pair[:2]  # two cities of one subregion
    keep = np.ones(hier_all.n, bool)
    keep[int(city[1])] = False  # the second outside the hierarchy
    hier = Hierarchy.from_gazetteer(small, keep)
    a, b = hier_all.ancestors[city[0]], hier_all.ancestors[city[1]]
    stop = a.clone()
    stop[3] = -1  # a neighbour whose path stops above the city level
    ids = torch.stack([a, b, stop])[None]  # one query, three neighbours
    nb = Neighbours(ids, torch.tensor([[1.0, 5.0, 7.0]], dtype=torch.float64))
    kids = torch.tensor([int(city[0])])
    # only the first neighbour counts at the city level: P = 1, not 1 / 13
    assert memory_conditional(nb, torch.tensor([0]), kids, 3, hier).tolist() == [1.0]
    # at the subregion level all three are under the region and name the same subregion
    sub = torch.tensor([int(a[2])])
    assert memory_conditional(nb, torch.tensor([0]), sub, 2, hier).tolist() == [1.0]


def test_fit_memory_weights_trusts_a_good_memory_and_ignores_noise(small):
    """A memory that knows the answer gets a weight (the smallest that makes every answer
    right) and lowers the likelihood loss; a memory that names random entities gets weight 0
    and temperature 1."""
    from hiergeo.model.build import build_model
    from hiergeo.predict.calibration import fit_memory_weights
    from hiergeo.train import load_config

    cfg = load_config("smoke")
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    leaves = hier.level_ids[3][torch.randint(len(hier.level_ids[3]), (300,), generator=g)]
    truth = hier.ancestors[leaves]
    with torch.no_grad():
        z = model(torch.randn(300, 12, generator=g))  # an untrained model: near uniform
    good = Neighbours(truth[:, None].expand(-1, 5, -1).clone(),
                      torch.ones(300, 5, dtype=torch.float64))
    rep = fit_memory_weights(model, z, good, truth, hier, cfg.loss.tau)
    for lvl, r in rep.items():
        assert r["a"] > 0 and r["accuracy"] == 1 > r["accuracy_model"], lvl
        assert r["nll"] < r["nll_model"], lvl
    assert model.memory_weight.min() > 0
    other = hier.level_ids[3][torch.randint(len(hier.level_ids[3]), (300, 5), generator=g)]
    noise = Neighbours(hier.ancestors[other], torch.ones(300, 5, dtype=torch.float64))
    # a model that is right: the true city's own point as every level's query
    emb_z = model.entities.detach()[leaves][:, None].expand(-1, 4, -1)
    rep = fit_memory_weights(model, emb_z, noise, truth, hier, [0.05] * 4)
    assert rep["city"]["a"] == 0.0 and rep["city"]["T"] == 1.0
    assert model.memory_weight[3] == 0 and model.mixture_temperature[3] == 1
