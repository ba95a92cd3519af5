"""The names benchmark's features, the baselines, and per-level temperature scaling."""

import numpy as np
import pandas as pd
import pytest
import torch

from hiergeo.baselines import ConstantGuess, FlatSoftmax, KNNRetrieval
from hiergeo.data.names import name_features, name_ngrams, split_rows
from hiergeo.data.splits import Split
from hiergeo.predict.calibration import fit_temperature, reliability


def test_name_ngrams_have_word_boundaries():
    g = name_ngrams("Bad Ems", (1, 3))
    assert "<ba" in g and "ems" in g and "ms>" in g and "d" in g
    assert "d e" not in "".join(g)  # words are n-grammed separately
    assert name_ngrams("", (1, 4)) == []


def test_name_features_are_stable_unit_vectors():
    a = name_features(["Springfield", "Springfeld", "Ouagadougou", ""], dim=64, buckets=2**12)
    b = name_features(["Springfield", "Springfeld", "Ouagadougou", ""], dim=64, buckets=2**12)
    assert np.array_equal(a, b)  # CRC-32, not Python's salted hash
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1) and not a[3].any()
    assert a[0] @ a[1] > a[0] @ a[2] + 0.3  # shared n-grams make similar names close


def test_split_rows_is_a_partition():
    s = split_rows(1000, 0.1, 0.1, seed=0)
    allrows = np.concatenate(list(s.values()))
    assert len(s["test"]) == 100 and len(s["val"]) == 90 and len(s["train"]) == 810
    assert np.array_equal(np.sort(allrows), np.arange(1000))
    assert np.array_equal(s["test"], split_rows(1000, 0.1, 0.1, seed=0)["test"])


def _toy_split(n_per=30, seed=0):
    """Three 'countries' with two 'regions' each, features = a direction per region."""
    dirs = np.random.default_rng(123).standard_normal((6, 16))  # the same for every split
    g = np.random.default_rng(seed)
    rows, x, ll = [], [], []
    centres = [(10, 10), (12, 12), (-30, 100), (-32, 102), (50, -100), (52, -98)]
    for r in range(6):
        for _ in range(n_per):
            rows.append([1 + r // 2, 10 + r, -1, -1])
            x.append(dirs[r] + 0.3 * g.standard_normal(16))
            ll.append(np.array(centres[r]) + g.normal(0, 0.1, 2))
    ids = torch.tensor(rows)
    return Split(table_=pd.DataFrame({"id": range(len(rows))}), latlon=torch.tensor(
        np.array(ll)), ids=ids, x=torch.tensor(np.array(x), dtype=torch.float32))


def test_knn_top1_and_vote_answer_with_neighbours():
    tr, te = _toy_split(seed=0), _toy_split(n_per=5, seed=1)
    p1 = KNNRetrieval(k=1).fit(tr).predict(te.x)
    sim = torch.nn.functional.normalize(te.x, dim=1) @ torch.nn.functional.normalize(
        tr.x, dim=1).T
    nn1 = sim.argmax(1).numpy()
    assert np.array_equal(p1.paths[:, 0, :], tr.ids.numpy()[nn1])
    assert np.allclose(p1.lat, tr.latlon.numpy()[nn1, 0])
    pv = KNNRetrieval(k=15, temperature=0.1).fit(tr).predict(te.x)
    assert (pv.paths[:, 0, 1] == te.ids[:, 1].numpy()).mean() > 0.9
    # the vote's location lies in the voted region: its sample's own region
    row_of = {tuple(np.round(v, 9)): i for i, v in enumerate(tr.latlon.numpy())}
    src = [row_of[(round(a, 9), round(b, 9))] for a, b in zip(pv.lat, pv.lon, strict=True)]
    assert np.array_equal(tr.ids.numpy()[src, 1], pv.paths[:, 0, 1])


def test_knn_vote_on_hand_case():
    # neighbours: two weak votes for region 11, one strong for 10 -> 11 wins at T large
    tr = Split(table_=pd.DataFrame({"id": range(3)}),
               latlon=torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=torch.float64),
               ids=torch.tensor([[1, 10, -1, -1], [1, 11, -1, -1], [1, 11, -1, -1]]),
               x=torch.eye(3))
    knn = KNNRetrieval(k=3, temperature=100.0).fit(tr)
    nb = (np.array([[0.9, 0.8, 0.7]]), np.array([[0, 1, 2]]))
    p = knn.predict(torch.zeros(1, 3), nb)
    assert p.paths[0, 0, 1] == 11 and p.lat[0] == 1.0  # the most similar row of region 11
    knn.temperature = 0.01  # sharp weights: the nearest decides
    assert knn.predict(torch.zeros(1, 3), nb).paths[0, 0, 1] == 10


def test_flat_softmax_learns_a_separable_toy():
    tr, te = _toy_split(seed=0), _toy_split(n_per=5, seed=1)
    m = FlatSoftmax(levels=(0, 1), epochs=30, batch_size=32, lr=1e-2).fit(tr, progress=False)
    p = m.predict(te.x)
    assert (p.paths[:, 0, 1] == te.ids[:, 1].numpy()).mean() > 0.95
    assert (p.paths[:, 0, 2:] == -1).all() and np.isfinite(p.level_prob[:, 0, :2]).all()


def test_constant_guess_is_one_point():
    tr = _toy_split()
    p = ConstantGuess(n_candidates=50, n_eval=100).fit(tr).predict(torch.zeros(7, 16))
    assert len(set(zip(p.lat, p.lon, strict=True))) == 1 and len(p) == 7


@pytest.mark.parametrize("true_t", [0.3, 1.0, 4.0])
def test_fit_temperature_recovers_the_generating_one(true_t):
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 12
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(logits / true_t, 1)
    y = torch.multinomial(p, 1, generator=g).flatten()
    q = torch.arange(n).repeat_interleave(k)
    is_true = (torch.arange(k)[None, :] == y[:, None]).flatten()
    T, nll, nll1 = fit_temperature(logits.flatten(), q, is_true)
    assert abs(T - true_t) / true_t < 0.1
    assert nll <= nll1 + 1e-12


def test_fit_temperature_handles_uneven_groups():
    # two queries with 2 and 3 candidates; the NLL at the fit is the minimum over a grid
    logits = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0, 0, 1, 1, 1])
    is_true = torch.tensor([True, False, False, True, False])
    T, nll, _ = fit_temperature(logits, q, is_true)

    def loop_nll(t):
        a = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 1))
        b = -np.log(np.exp(1 / t) / (np.exp(2 / t) + np.exp(1 / t) + 1))
        return (a + b) / 2

    assert nll == pytest.approx(loop_nll(T), rel=1e-9)
    assert nll <= min(loop_nll(t) for t in np.geomspace(0.05, 20, 400)) + 1e-9


def test_reliability_on_a_hand_case():
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.2, np.nan])
    right = np.array([1, 1, 1, 0, 0, 1, 1], bool)
    r = reliability(conf, right, bins=10)
    # bins: 0.9 -> acc 0.75 (gap 0.15, weight 4/6); 0.2 -> acc 0.5 (gap 0.3, weight 2/6)
    assert r["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.3)
    assert r["n"] == 6 and r["n_at_least_0.5"] == 4 and r["accuracy_at_least_0.5"] == 0.75


def test_sibling_logits_match_a_plain_loop(small):
    from hiergeo.geometry.spaces import make_space
    from hiergeo.model.hierarchy import Hierarchy
    from hiergeo.predict.calibration import sibling_logits

    hier = Hierarchy.from_gazetteer(small)
    space = make_space("poincare")
    g = torch.Generator().manual_seed(1)
    ent = space.init_entities(torch.randn(hier.n, 4, generator=g, dtype=torch.float64) * 0.3)
    truth = hier.level_ids[2][[0, 1, 1, 2]]
    truth = torch.cat([truth, torch.tensor([-1])])  # a missing label is skipped
    z = space.query(torch.randn(5, 4, generator=g, dtype=torch.float64))
    lg, q, t, child = sibling_logits(z, truth, ent, space, hier, tau=0.5, chunk=2)
    for i in range(4):
        p = int(hier.parent[truth[i]])
        kids = hier.child_list[hier.child_start[p]:hier.child_start[p] + hier.child_count[p]]
        want = sorted((-float(space.pair(z[i], ent[k])) / 0.5, bool(k == truth[i]))
                      for k in kids)
        got = sorted(zip(lg[q == i].tolist(), t[q == i].tolist(), strict=True))
        assert np.allclose([w[0] for w in want], [x[0] for x in got], atol=1e-12)
        assert [w[1] for w in want] == [x[1] for x in got]
        assert sorted(child[q == i].tolist()) == sorted(kids.tolist())
        assert child[(q == i) & t].tolist() == [int(truth[i])]
    assert not (q == 4).any()


def test_calibration_is_stored_with_the_model_and_applied(smoke_run, cache_env):
    """The run's fitted temperatures are in calibration.json and in the checkpoint, and
    prediction divides each level's logits by tau * T."""
    import json

    from hiergeo.evaluate import load_run
    from hiergeo.predict import Search, descend, predict

    run_dir, res = smoke_run
    fit = json.loads((run_dir / "calibration.json").read_text())["levels"]
    cfg, model, hier, _ = load_run(run_dir)
    temps = model.level_temperature.tolist()
    assert temps == pytest.approx([fit[lvl]["T"] for lvl in ("country", "region",
                                                              "subregion", "city")])
    assert any(abs(t - 1) > 1e-3 for t in temps)  # a fit, not the default
    assert res["temperatures"]["country"]["nll"] <= res["temperatures"]["country"][
        "nll_before"] + 1e-12
    x = torch.randn(7, model.encoder.dim, generator=torch.Generator().manual_seed(0))
    got = predict(model, x, hier, cfg.loss.tau, beams=[3, 3, 3, 3], topk=2)
    with torch.no_grad():
        want = descend(model(x), model.entities.detach(), model.space, hier,
                       [t * c for t, c in zip(cfg.loss.tau, temps, strict=True)],
                       Search(beams=(3, 3, 3, 3), topk=2))
    assert np.array_equal(got.paths, want.paths)
    assert np.allclose(got.level_prob, want.level_prob)
    assert "calibration" in res and 0 <= res["calibration"]["country"]["ece"] <= 1


def test_tiled_topk_equals_one_matrix_product():
    from hiergeo.predict.memory import chunked_topk_cosine

    g = torch.Generator().manual_seed(0)
    q, ref = torch.randn(37, 8, generator=g), torch.randn(1000, 8, generator=g)
    v, i = chunked_topk_cosine(q, ref, 5, chunk=10, tile=97)
    top = (q @ ref.T).topk(5, dim=1)
    assert torch.allclose(v, top.values) and torch.equal(i, top.indices)
