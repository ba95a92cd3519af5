"""Sampled candidates estimate the full loss: distinct draws, a partition of the level, and
importance weights whose expected sum is the full sum."""

import math

import numpy as np
import pytest
import torch

from hiergeo.geometry import expmap0, project
from hiergeo.geometry.spaces import Poincare
from hiergeo.losses import GeoWeightedContrastive
from hiergeo.losses.candidates import (
    CandidateSampler,
    distinct_uniform,
    sample_candidates,
)
from hiergeo.model.hierarchy import Hierarchy


@pytest.fixture(scope="module")
def world_hier(world):
    return Hierarchy.from_gazetteer(world)


def _positives(hier, level, B, seed):
    g = torch.Generator().manual_seed(seed)
    ids = hier.level_ids[level]
    return ids[torch.randint(len(ids), (B,), generator=g)]


@pytest.mark.parametrize("m,k", [(0, 5), (3, 5), (5, 5), (17, 5), (19, 5), (21, 5), (1000, 5)])
def test_distinct_uniform_is_a_uniform_subset(m, k):
    """Distinct values in range; every value equally often (chi-square over many draws), on
    both paths (random keys for m <= 4k, redraws above)."""
    g = torch.Generator().manual_seed(m)
    rows = 4000
    idx, ok = distinct_uniform(torch.full((rows,), m), k, g)
    assert ok.sum(1).eq(min(k, m)).all()
    if m == 0:
        return
    v = idx[ok].view(rows, -1)
    assert (v >= 0).all() and (v < m).all()
    assert (v.sort(1).values.diff(dim=1) > 0).all()  # distinct in each row
    counts = np.bincount(v.flatten().numpy(), minlength=m)
    expect = rows * min(k, m) / m
    if m > k:
        chi2 = ((counts - expect) ** 2 / expect).sum()
        # (m - 1) degrees of freedom: 6 standard deviations above the mean never happen by chance
        assert chi2 < (m - 1) + 6 * math.sqrt(2 * (m - 1)), chi2
    else:
        assert (counts == rows).all()


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [(8, 8, 16), (0, 8, 16), (8, 0, 16), (0, 0, 1), (32, 32, 64)])
def test_candidates_partition_the_level(world_hier, level, n):
    """No entity twice in a row, never the positive as a negative, only active entities of the
    level, and the importance weights of a row sum to the number of negatives of the level:
    each stratum of m entities gets k draws of weight m / k."""
    hier = world_hier
    sampler = CandidateSampler(hier)
    pos = _positives(hier, level, 64, level)
    cand, valid, log_share = sampler.sample(pos, level, *n, torch.Generator().manual_seed(1))
    assert cand.shape == (64, 1 + sum(n)) and (cand[:, 0] == pos).all() and valid[:, 0].all()
    assert (log_share[:, 0] == 0).all() and (log_share[~valid] == 0).all()
    level_set = set(hier.level_ids[level].tolist())
    for b in range(len(pos)):
        c = cand[b][valid[b]].tolist()
        assert len(set(c)) == len(c)
        assert pos[b].item() not in c[1:]
        assert set(c) <= level_set
    total = log_share.exp().masked_fill(~valid, 0)[:, 1:].sum(1)
    assert torch.allclose(total, torch.full_like(total, len(level_set) - 1), rtol=1e-12)


def test_strata_are_siblings_cousins_rest(world_hier):
    """Siblings share the parent, cousins the grandparent but not the parent, the rest neither;
    a parent with fewer children than asked for gives all of them."""
    hier = world_hier
    pos = _positives(hier, 3, 64, 7)
    cand, valid, _ = sample_candidates(hier, pos, 3, 8, 8, 16, torch.Generator().manual_seed(2))
    par, grand = hier.parent, hier.parent[hier.parent]
    sib, cous, rest = cand[:, 1:9], cand[:, 9:17], cand[:, 17:]
    vs, vc = valid[:, 1:9], valid[:, 9:17]
    assert (par[sib] == par[pos][:, None])[vs].all()
    assert ((grand[cous] == grand[pos][:, None]) & (par[cous] != par[pos][:, None]))[vc].all()
    assert (grand[rest] != grand[pos][:, None]).all()
    n_sib = hier.child_count[par[pos]] - 1
    assert (vs.sum(1) == n_sib.clamp_max(8)).all()
    few = n_sib < 8
    assert few.any()  # the case is exercised
    for b in torch.nonzero(few).flatten().tolist():
        kids = set(hier.child_list[hier.child_start[par[pos[b]]]:][:hier.child_count[
            par[pos[b]]]].tolist()) - {pos[b].item()}
        assert set(sib[b][vs[b]].tolist()) == kids


def _setup(hier, level, B=16, seed=0, tau=1.0):
    """Random entity points and queries for ``level``; the loss as full and per-row."""
    g = torch.Generator().manual_seed(seed)
    pts = project(expmap0(torch.randn(hier.n, 4, generator=g, dtype=torch.float64) * 0.6))
    pos = _positives(hier, level, B, seed + 1)
    z = project(expmap0(torch.randn(B, 4, generator=g, dtype=torch.float64) * 0.6))
    latlon = hier.latlon[pos] + torch.randn(B, 2, generator=g, dtype=torch.float64) * 0.5
    fn = GeoWeightedContrastive(Poincare(), tau=tau, sigma_km=500.0, lam=2.0)
    tbl = hier.level_ids[level]
    full = fn.full(z, pts[tbl], hier.latlon[tbl], latlon, hier.pos_in_level[pos])["per_sample"]

    def sampled(cand, valid, log_share):
        return fn(z, pts[cand], hier.latlon[cand], latlon, valid, log_share)["per_sample"]

    return pos, full, sampled


def test_covering_every_entity_gives_the_full_loss(world_hier):
    """With as many draws as each stratum has entities, one draw is the full loss exactly."""
    hier = world_hier
    level = 1  # regions: a few thousand
    pos, full, sampled = _setup(hier, level)
    n = len(hier.level_ids[level])
    cand, valid, log_share = sample_candidates(hier, pos, level, n, n, n,
                                               torch.Generator().manual_seed(0))
    assert (log_share == 0).all()
    assert torch.allclose(sampled(cand, valid, log_share), full, rtol=1e-12, atol=0)


@pytest.mark.parametrize("level", [1, 2])
def test_sampled_loss_estimates_the_full_loss(world_hier, level):
    """Over 200 draws of (8 siblings, 8 cousins, 16 others) among 3,789 regions or 18,943
    subregions:

    - ``exp(loss)`` = denominator / exp(s_0) is an unbiased estimate of its full value: the
      mean of 200 draws lies within 4.5 standard errors of it in every row;
    - the loss itself is ``log`` of that estimate, biased low by Jensen's inequality by about
      ``Var / (2 mean²)``: the batch mean of 200 draws lies within 4.5 standard errors plus
      twice that estimated bias of the full loss;
    - without the importance weights (the former sampler's loss) it does not: the gap is
      over ten times that tolerance.

    At tau = 1 on these random points the tolerance is about 0.2 (regions) and 0.09
    (subregions), the gap 0.06 and 0.03, the unweighted loss's gap about 5. At smaller tau
    the denominator is dominated by a few negatives that most draws miss, and the Jensen
    bias grows (at tau = 0.25 and 32/32/64 draws, about 1 nat on random points).
    """
    hier = world_hier
    pos, full, sampled = _setup(hier, level)
    sampler = CandidateSampler(hier)
    g = torch.Generator().manual_seed(3)
    losses, plain = [], []
    for _ in range(200):
        cand, valid, log_share = sampler.sample(pos, level, 8, 8, 16, g)
        losses.append(sampled(cand, valid, log_share))
        plain.append(sampled(cand, valid, None))
    L = torch.stack(losses)  # [draws, B]
    est = L.exp()
    se = est.std(0) / math.sqrt(len(L))
    assert ((est.mean(0) - full.exp()).abs() <= 4.5 * se).all(), (est.mean(0), full.exp(), se)
    batch = L.mean(1)
    jensen = (est.var(0) / (2 * est.mean(0) ** 2)).mean()
    tol = 4.5 * batch.std() / math.sqrt(len(batch)) + 2 * jensen
    gap = (batch.mean() - full.mean()).abs()
    assert gap <= tol, (float(gap), float(tol))
    assert (torch.stack(plain).mean() - full.mean()).abs() > 10 * tol


def test_level_losses_full_and_sampled_agree(small, loss_terms):
    """The trainer's loss terms are the same whether a level scores every entity or sampled
    candidates that cover it: what a GPU (full) and a CPU (sampled) optimise is one objective."""
    from hiergeo.model.build import build_model
    from hiergeo.train import load_config

    cfg = load_config("smoke", ["loss.scope=level", "loss.n_siblings=100",
                                "loss.n_cousins=100", "loss.n_random=100"])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    ids = torch.as_tensor(small.ancestors[hier.level_ids[3].numpy()])
    ll = hier.latlon[hier.level_ids[3]]
    z = model(torch.randn(len(ids), 12, generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(0)
    full = loss_terms(cfg, model, hier, z.double(), ids, ll, gen, [True] * 4)
    samp = loss_terms(cfg, model, hier, z.double(), ids, ll, gen, [False] * 4)
    for k in full:
        assert torch.allclose(full[k], samp[k], rtol=1e-10), k


def test_sibling_pairs_are_every_child_of_the_parent(world):
    hier = Hierarchy.from_gazetteer(world)
    g = torch.Generator().manual_seed(0)
    for lvl in range(4):
        ids = hier.level_ids[lvl]
        pos = ids[torch.randint(len(ids), (64,), generator=g)]
        q, ent, is_pos = hier.sibling_pairs(pos)
        assert torch.equal(ent[is_pos], pos) and torch.equal(q[is_pos], torch.arange(64))
        for i in range(64):
            p = int(hier.parent[pos[i]])
            kids = hier.child_list[hier.child_start[p]:hier.child_start[p]
                                   + hier.child_count[p]]
            got = ent[q == i]
            assert len(got) == len(set(got.tolist())) and set(got.tolist()) == set(
                kids.tolist())
