"""Tree embeddings: exactness on small trees, numerical health, the baseline, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import gazetteer
from hiergeo.embedding import embed_tree, evaluate_embedding, load_embedding
from hiergeo.embedding.optimize import optimize
from hiergeo.geometry import dist, dist0, dist_matrix, make_ball, max_dist0


def _tree(tmp_path, n_countries=4, regions=3, subregions=3, cities=4, seed=0, hub=0):
    """A gazetteer of random places: every country has the same shape; with ``hub`` > 0 one
    extra subregion holds ``hub`` cities."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_countries):
        lat0, lon0 = rng.uniform(-50, 60), rng.uniform(-170, 170)
        for b in range(regions):
            for s in range(subregions):
                for k in range(cities):
                    rows.append((lat0 + b + rng.uniform(0, 0.9), lon0 + s + rng.uniform(0, 0.9),
                                 f"c{k}", f"r{b}", f"s{s}", f"A{chr(65 + a)}"))
    for k in range(hub):
        rows.append((10 + rng.uniform(0, 1), 20 + rng.uniform(0, 1), f"h{k}", "hubr", "hubs",
                     "HB"))
    path = tmp_path / f"places_{seed}_{hub}.csv"
    pd.DataFrame(rows, columns=["lat", "lon", "name", "admin1", "admin2", "cc"]).to_csv(
        path, index=False)
    return gazetteer.build(path, boundaries=False)


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path)


@pytest.mark.parametrize("dim", [4, 8, 16])
def test_parent_and_children_rank_first_for_every_node(tree, dim):
    emb = embed_tree(tree, dim=dim)
    m = evaluate_embedding(emb, tree, n_map_nodes=len(tree.entities), n_pairs=2000)
    assert m["map_nodes"] == len(tree.entities)  # every node, not a sample
    assert m["map"] == 1.0
    assert m["non_finite"] == 0


def test_every_entity_is_its_own_nearest_at_its_level(tree):
    emb = embed_tree(tree, dim=8)
    for level in gazetteer.LEVELS:
        ids = torch.tensor(tree.level(level)["id"].to_numpy())
        d = dist_matrix(emb.points[ids], emb.points[ids], emb.c)
        assert (d.argmin(dim=1) == torch.arange(len(ids))).all()
        off = d + torch.eye(len(ids), dtype=d.dtype) * 1e9
        assert off.min() > 0.1


def test_distances_are_exact_and_match_geoopt(tree):
    """Against 50-digit arithmetic everywhere; against geoopt to 1e-9 where geoopt is itself
    accurate: both points within 9/sqrt(c) of the origin and 12/sqrt(c) of each other (nearer
    the edge its Möbius addition loses up to ~2e-7, and its artanh clamp saturates distances
    beyond ~16.8/sqrt(c))."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    c = 0.7
    emb = embed_tree(tree, dim=16, c=c)
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, len(emb.points), (5000,), generator=g)
    j = torch.randint(0, len(emb.points), (5000,), generator=g)
    x, y = emb.points[i], emb.points[j]
    ours = dist(x, y, c)
    for t in range(0, 5000, 25):
        xs = [mpmath.mpf(float(v)) for v in x[t]]
        ys = [mpmath.mpf(float(v)) for v in y[t]]
        d2 = sum((a - b) ** 2 for a, b in zip(xs, ys, strict=True))
        x2, y2 = sum(a * a for a in xs), sum(b * b for b in ys)
        mc = mpmath.mpf(c)
        exact = mpmath.acosh(1 + 2 * mc * d2 / ((1 - mc * x2) * (1 - mc * y2))) / mpmath.sqrt(mc)
        assert abs(float(ours[t]) - float(exact)) < 1e-9
    inner = (dist0(x, c) < 9 / c**0.5) & (dist0(y, c) < 9 / c**0.5) & (ours < 12 / c**0.5)
    assert inner.sum() > 100
    assert (ours - make_ball(c).dist(x, y))[inner].abs().max() < 1e-9


def test_curvature_scales_distances(tree):
    a = embed_tree(tree, dim=8, c=1.0)
    b = embed_tree(tree, dim=8, c=4.0)
    i = torch.arange(len(a.points))
    assert torch.allclose(dist(a.points[i], a.points.roll(1, 0), 1.0) / 2,
                          dist(b.points[i], b.points.roll(1, 0), 4.0), atol=1e-6)


def test_a_node_with_3000_children(tmp_path):
    gz = _tree(tmp_path, n_countries=2, hub=3000)
    hub = gz.id_of("hubs_hubr_HB")
    assert len(gz.children(hub)) == 3000
    emb = embed_tree(gz, dim=16)
    assert torch.isfinite(emb.points).all()
    assert dist0(emb.points, emb.c).max() <= max_dist0(torch.float64, emb.c)
    m = evaluate_embedding(emb, gz, n_map_nodes=len(gz.entities), n_pairs=5000)
    assert m["non_finite"] == 0
    assert m["map"] > 0.999
    kids = torch.tensor(gz.children(hub)["id"].to_numpy())
    d = dist_matrix(emb.points[kids], emb.points[kids], emb.c)
    d.fill_diagonal_(float("inf"))
    to_hub = dist(emb.points[kids], emb.points[hub], emb.c)
    # siblings are further from each other than from their parent
    assert d.min() > to_hub.max()


def test_separation_in_chunks_of_pairs_is_the_same_to_the_bit(tmp_path, monkeypatch):
    """The sibling separation pushes close pairs a chunk at a time (memory); chunks of 7
    pairs must give exactly the points of one chunk, as the additions keep their order."""
    from hiergeo.embedding import construct

    gz = _tree(tmp_path, n_countries=2, hub=400)
    whole = embed_tree(gz, dim=8)
    monkeypatch.setattr(construct, "_PAIR_CHUNK", 7)
    chunked = embed_tree(gz, dim=8)
    assert whole.info["separation"] == chunked.info["separation"]
    assert whole.info["separation"]["iterations"] > 1  # pairs were pushed
    assert torch.equal(whole.points, chunked.points)


def test_siblings_close_on_earth_are_close_in_the_ball(tmp_path):
    gz = _tree(tmp_path, n_countries=12, regions=8, subregions=2, cities=2, seed=3)
    m = evaluate_embedding(embed_tree(gz, dim=16), gz, n_pairs=2000)
    assert m["sibling_geo_spearman"] > 0.6


def test_deterministic_and_round_trip(tree, tmp_path):
    a, b = embed_tree(tree, dim=8, seed=3), embed_tree(tree, dim=8, seed=3)
    assert torch.equal(a.points, b.points)
    a.save(tmp_path / "emb")
    c = load_embedding(tmp_path / "emb")
    assert torch.equal(c.points, a.points) and c.c == a.c and c.method == "construct"


def test_bad_arguments(tree):
    with pytest.raises(ValueError, match="method"):
        embed_tree(tree, method="sarkar")
    with pytest.raises(ValueError, match="dim"):
        embed_tree(tree, dim=1)
    with pytest.raises(ValueError, match="positive"):
        embed_tree(tree, c=0.0)


def test_optimisation_baseline_learns(tree):
    """Backward smoke test: a few epochs, finite, the loss falls, the tree is partly found."""
    parent = tree.entities["parent_id"].to_numpy()
    pts, info = optimize(parent, dim=8, epochs=8, burn_in=1, batch_size=64, progress=False)
    assert torch.isfinite(pts).all()
    assert info["losses"][-1] < info["losses"][0]
    emb = embed_tree(tree, dim=8, method="optimize", epochs=8, burn_in=1, batch_size=64,
                     progress=False)
    m_opt = evaluate_embedding(emb, tree, n_map_nodes=len(tree.entities), n_pairs=2000)
    m_con = evaluate_embedding(embed_tree(tree, dim=8), tree, n_map_nodes=len(tree.entities),
                               n_pairs=2000)
    assert 0.2 < m_opt["map"] <= m_con["map"]


def test_cli_writes_metrics_points_and_picture(tree, tmp_path):
    from hiergeo.cli.embedding import main as embed_main

    art = tmp_path / "gz"
    gazetteer.build(tree.meta["sources"]["places"]["path"], boundaries=False, out=art)
    out = tmp_path / "run"
    assert embed_main(["--dim", "4", "--gazetteer", str(art), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["map"] == 1.0 and metrics["dim"] == 4
    assert load_embedding(out).points.shape == (len(tree.entities), 4)
    assert (out / "disk.png").stat().st_size > 10_000


def test_sibling_retrieval_with_pytorch_metric_learning(tree):
    """PML's AccuracyCalculator in the ball: a construction keeps siblings nearest each
    other; points shuffled between entities of a level do not."""
    from hiergeo.embedding.quality import sibling_retrieval

    emb = embed_tree(tree, dim=8)
    e = tree.entities
    parent, depth = e["parent_id"].to_numpy(), e["depth"].to_numpy()
    good = sibling_retrieval(emb.points.double(), parent, depth, emb.c)
    assert set(good) == {"sibling_precision_at_1", "sibling_map_at_r"}
    assert all(v >= 0.9 for v in good["sibling_precision_at_1"].values())
    pts = emb.points.double().clone()
    rng = np.random.default_rng(0)
    for d in (2, 3, 4):
        ids = np.flatnonzero(depth == d)
        pts[ids] = pts[rng.permutation(ids)]
    bad = sibling_retrieval(pts, parent, depth, emb.c)
    assert bad["sibling_map_at_r"]["city"] < good["sibling_map_at_r"]["city"]
