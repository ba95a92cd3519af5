"""Predicting within a region: descent over the allowed subtrees only, probabilities
renormalised over them, the memory's neighbours outside ignored, unknown codes refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hiergeo.embedding import embed_tree
from hiergeo.geometry import project
from hiergeo.geometry.spaces import make_space
from hiergeo.model.hierarchy import Hierarchy
from hiergeo.predict import MemoryMix, Search, descend
from hiergeo.predict.memory import Neighbours
from hiergeo.predict.within import RegionError, allowed_entities, restrict

TAUS = [1.0] * 4
WIDE = Search(beams=(100, 100, 100, 100), topk=20)


@pytest.fixture
def tree(small):
    emb = embed_tree(small, dim=4)
    hier = Hierarchy.from_gazetteer(small)
    g = torch.Generator().manual_seed(7)
    # queries near the leaves, noisy enough that the country is often wrong
    leaves = hier.level_ids[3].repeat(8)
    z = project(emb.points[leaves] + 0.6 * torch.randn(len(leaves), 4, generator=g,
                                                     dtype=torch.float64))
    return small, emb.points, hier, z, leaves


def test_no_path_leaves_the_region(tree):
    gz, pts, hier, z, _ = tree
    space = make_space("poincare")
    for within in ("NZ,na", ["Canterbury_NZ", "Germany"]):
        sub = restrict(hier, gz.entities, within)
        allowed = allowed_entities(within, gz.entities, hier.ancestors.numpy())
        p = descend(z, pts, space, sub, TAUS, WIDE)
        depth = (p.paths >= 0).sum(-1)
        deepest = np.take_along_axis(p.paths, (depth - 1).clip(0)[..., None], 2)[..., 0]
        assert (depth > 0).all() and allowed[deepest].all()  # above: the allowed's ancestors
        # every row's top-k paths sum to one over what is allowed (paths reach the leaves)
        assert np.allclose(np.exp(p.score).sum(1), 1.0)


def test_probabilities_are_renormalised_over_the_allowed_countries(tree):
    gz, pts, hier, z, _ = tree
    space = make_space("poincare")
    full = descend(z, pts, space, hier, TAUS, WIDE)
    sub = descend(z, pts, space, restrict(hier, gz.entities, "NZ,NA"), TAUS, WIDE)
    nz, na = gz.id_of("NZ"), gz.id_of("NA")

    def p_country(pred, c):  # P(country) read off the paths through it
        hit = pred.paths[:, :, 0] == c
        return np.where(hit, pred.level_prob[:, :, 0], 0).max(1)

    a, b = p_country(full, nz), p_country(full, na)
    assert np.allclose(p_country(sub, nz), a / (a + b))
    assert np.allclose(p_country(sub, na), b / (a + b))
    # below the country nothing changes: the same conditional probabilities
    top = sub.paths[:, 0]
    for i in range(0, len(z), 7):
        k = int(np.flatnonzero((full.paths[i] == top[i]).all(1))[0])
        assert np.allclose(full.level_prob[i, k, 1:], sub.level_prob[i, 0, 1:])


def test_restricting_to_the_true_country_never_lowers_country_accuracy(tree):
    gz, pts, hier, z, leaves = tree
    space = make_space("poincare")
    truth = hier.ancestors[leaves, 0].numpy()
    free = descend(z, pts, space, hier, TAUS, Search(beams=(2, 2, 2, 2)))
    acc_free = (free.paths[:, 0, 0] == truth).mean()
    hits = np.zeros(len(z), bool)
    for c in np.unique(truth):
        rows = np.flatnonzero(truth == c)
        sub = restrict(hier, gz.entities, [gz.entities["key"][c]])
        p = descend(z[rows], pts, space, sub, TAUS, Search(beams=(2, 2, 2, 2)))
        hits[rows] = p.paths[:, 0, 0] == c
        # the rows already right keep their whole answer
        right = free.paths[rows, 0, 0] == c
        assert (p.paths[right, 0] == free.paths[rows][right, 0]).all()
    assert acc_free < 1  # the case is not trivial
    assert hits.mean() >= acc_free and hits.all()


def test_polygon_keeps_every_predicted_point_inside(tree, tmp_path):
    gz, pts, hier, z, _ = tree
    from shapely.geometry import Point, shape

    # a box around New Zealand's South Island: Christchurch and Timaru, not Fiji
    box = {"type": "Polygon", "coordinates": [[[168, -46], [174, -46], [174, -42],
                                                [168, -42], [168, -46]]]}
    path = tmp_path / "south_island.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": box}]}))
    sub = restrict(hier, gz.entities, path)
    p = descend(z, pts, make_space("poincare"), sub, TAUS, Search(beams=(3, 3, 3, 3)))
    poly = shape(box)
    assert all(poly.contains(Point(lon, lat)) for lat, lon in zip(p.lat, p.lon, strict=True))
    assert set(p.paths[:, 0, 0].tolist()) == {gz.id_of("NZ")}


def test_memory_neighbours_outside_the_region_are_ignored(tree):
    gz, pts, hier, z, _ = tree
    space = make_space("poincare")
    sub = restrict(hier, gz.entities, "NZ,NA")
    n = len(z)
    fiji = torch.as_tensor(hier.ancestors[gz.id_of("East__Northern_FJ")]).repeat(n, 3, 1)
    outside = Neighbours(fiji, torch.ones(n, 3, dtype=torch.float64))
    alone = descend(z, pts, space, sub, TAUS, WIDE)
    # a mixture temperature other than 1: with 1, renormalising within the siblings would
    # hide a vote for an outside entity even if memory_conditional counted it
    for temperature in ((1.0,) * 4, (0.5,) * 4):
        with_mem = descend(z, pts, space, sub, TAUS, WIDE,
                           MemoryMix(outside, (0.9,) * 4, temperature))
        assert (alone.paths == with_mem.paths).all()
        assert np.allclose(alone.level_prob, with_mem.level_prob)
    # a neighbour inside does vote: the memory is not simply switched off
    timaru = torch.as_tensor(hier.ancestors[gz.id_of("Timaru_Timaru District_Canterbury_NZ")])
    both = Neighbours(torch.cat([fiji[:, :2], timaru.repeat(n, 1, 1)], 1),
                      torch.ones(n, 3, dtype=torch.float64))
    voted = descend(z, pts, space, sub, TAUS, WIDE, MemoryMix(both, (0.9,) * 4))
    assert (voted.paths[:, 0, 0] == gz.id_of("NZ")).all()


@pytest.mark.parametrize("within, nearest", [("NZL", "NZ"), ("Germny", "Germany"),
                                             ("Canterbury", "Canterbury_NZ")])
def test_unknown_codes_are_refused_with_the_nearest_named(small, within, nearest):
    hier = Hierarchy.from_gazetteer(small)
    with pytest.raises(RegionError, match=f"'{within}' \\(nearest: [^)]*{nearest}"):
        restrict(hier, small.entities, f"NZ,{within}")


def test_a_region_the_model_does_not_know_is_refused(small, tmp_path):
    active = np.ones(len(small.entities), bool)
    active[small.entities["key"].str.endswith("_JP") | (small.entities["key"] == "JP")] = False
    hier = Hierarchy.from_gazetteer(small, active)
    with pytest.raises(RegionError, match="no entity this model predicts"):
        restrict(hier, small.entities, "JP")
    empty = tmp_path / "sea.geojson"
    empty.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[-30, 0], [-20, 0], [-20, 10], [-30, 0]]]}))
    with pytest.raises(RegionError, match="polygon holds no entity"):
        restrict(hier, small.entities, empty)
    with pytest.raises(RegionError, match="no such polygon file"):
        restrict(hier, small.entities, tmp_path / "missing.geojson")


@pytest.fixture(scope="module")
def smoke_model(smoke_run):
    """The smoke run (a model folder Geolocator loads) and its demo feature store."""
    import gazetteer
    from hiergeo.data.demo import demo_store
    from hiergeo.train import load_config

    run_dir, _ = smoke_run
    cfg = load_config("smoke", [])
    return run_dir, demo_store(gazetteer.load(), cfg.data.demo)


def test_geolocator_and_cli_predict_within(smoke_model, tmp_path):
    from hiergeo import Geolocator
    from hiergeo.cli.predict import main

    model, store = smoke_model
    g = Geolocator.load(model)
    free = g.predict([store])
    two = free["country_key"].value_counts().index[:2].tolist()
    inside = g.predict([store], within=two)
    assert set(inside["country_key"]) <= set(two) and len(inside) == len(free)
    # restricted to each row's true country, the country is never less often right
    truth = free["true_country_key"].to_numpy(object)
    right = free["hit_country"].fillna(False).to_numpy(bool)
    for c in two:
        rows = np.flatnonzero(truth == c)
        own = g.predict([store], within=c)
        assert (own["country_key"] == c).all()
        assert own["hit_country"].fillna(False).to_numpy(bool)[rows].sum() >= right[rows].sum()
    out = tmp_path / "p.csv"
    assert main(["--model", str(model), str(store), "--out", str(out), "--within",
                 ",".join(two), "--no-progress"]) == 0
    import pandas as pd

    assert set(pd.read_csv(out, keep_default_na=False)["country_key"]) <= set(two)
    assert main(["--model", str(model), str(store), "--out", str(out), "--within",
                 f"{two[0]},Xanadu", "--no-progress"]) == 2
