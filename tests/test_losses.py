"""The geo-weighted contrastive loss against a plain-loop reference."""

import math

import pytest
import torch

from hiergeo.geometry import expmap0, project
from hiergeo.geometry.spaces import Poincare
from hiergeo.losses import GeoWeightedContrastive


def _haversine(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin(
        (lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def _poincare(x, y, c):
    x2, y2 = sum(v * v for v in x), sum(v * v for v in y)
    d2 = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
    return math.acosh(1 + 2 * c * d2 / ((1 - c * x2) * (1 - c * y2))) / math.sqrt(c)


def _weight(km, sigma, lam, form):
    if form == "page":
        return math.exp(-km / sigma)
    return 1.0 + lam * math.exp(-km / sigma)


def _reference(z, pts, cll, ll, valid, c, tau, sigma, lam=1.0, form="paper", share=None):
    total = 0.0
    for b in range(len(z)):
        s = [-_poincare(z[b], pts[b][k], c) / tau for k in range(len(pts[b]))]
        denom = math.exp(s[0])
        for k in range(1, len(s)):
            if valid[b][k]:
                n = 1.0 if share is None else share[b][k]
                denom += n * _weight(_haversine(ll[b], cll[b][k]), sigma, lam, form) * math.exp(
                    s[k])
        total += -math.log(math.exp(s[0]) / denom)
    return total / len(z)


def _case(seed, dtype, B=5, K=7, D=4, c=1.0):
    g = torch.Generator().manual_seed(seed)
    z = project(expmap0(torch.randn(B, D, generator=g, dtype=torch.float64) * 0.8, c), c)
    pts = project(expmap0(torch.randn(B, K, D, generator=g, dtype=torch.float64) * 1.5, c), c)
    ll = torch.stack([torch.rand(B, generator=g, dtype=torch.float64) * 120 - 60,
                      torch.rand(B, generator=g, dtype=torch.float64) * 340 - 170], -1)
    cll = ll[:, None, :] + torch.randn(B, K, 2, generator=g, dtype=torch.float64) * 10
    valid = torch.rand(B, K, generator=g) > 0.2
    valid[:, 0] = True
    return z.to(dtype), pts, cll, ll, valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c,tau,sigma", [(1.0, 0.5, 500.0), (0.5, 1.0, 2000.0)])
@pytest.mark.parametrize("form,lam", [("paper", 1.0), ("paper", 3.5), ("paper", 0.0),
                                      ("page", 1.0)])
def test_matches_plain_loop(dtype, seed, c, tau, sigma, form, lam):
    z, pts, cll, ll, valid = _case(seed, dtype, c=c)
    loss = GeoWeightedContrastive(Poincare(c), tau=tau, sigma_km=sigma, lam=lam,
                                  form=form)
    got = loss(z, pts, cll, ll, valid)["loss"]
    assert got.dtype == dtype
    ref = _reference(z.double().tolist(), pts.tolist(), cll.tolist(), ll.tolist(),
                     valid.tolist(), c, tau, sigma, lam, form)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert abs(got.item() - ref) < tol * max(1.0, abs(ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_weights_match_plain_loop(dtype, seed):
    """``log_share``: a column standing for n negatives counts n times in the denominator."""
    z, pts, cll, ll, valid = _case(seed, dtype)
    share = torch.rand(valid.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * 50 + 1
    loss = GeoWeightedContrastive(Poincare(), tau=0.5, sigma_km=800.0, lam=2.0)
    got = loss(z, pts, cll, ll, valid, log_share=share.log())["loss"]
    ref = _reference(z.double().tolist(), pts.tolist(), cll.tolist(), ll.tolist(),
                     valid.tolist(), 1.0, 0.5, 800.0, 2.0, "paper", share.tolist())
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert abs(got.item() - ref) < tol * max(1.0, abs(ref))


def _infonce(logits, shift=0.0):
    """Cross-entropy with the positive at column 0, negatives' logits raised by ``shift``."""
    shifted = logits.clone()
    shifted[:, 1:] += shift
    return torch.nn.functional.cross_entropy(shifted, torch.zeros(len(logits), dtype=torch.long))


def test_limits_that_are_infonce():
    """page with sigma = inf and paper with lam = 0 are plain InfoNCE; paper with sigma = inf
    weighs every negative 1 + lam."""
    z, pts, cll, ll, _ = _case(3, torch.float64)
    inf = float("inf")
    for kw in ({"form": "page", "sigma_km": inf}, {"form": "paper", "lam": 0.0},
               {"form": "paper", "lam": 0.0, "sigma_km": inf}):
        out = GeoWeightedContrastive(Poincare(), tau=0.5, **kw)(z, pts, cll, ll)
        assert torch.allclose(out["loss"], _infonce(out["logits"])), kw
    out = GeoWeightedContrastive(Poincare(), tau=0.5, sigma_km=inf, lam=2.0)(
        z, pts, cll, ll)
    assert torch.allclose(out["loss"], _infonce(out["logits"], math.log(3.0)))


@pytest.mark.parametrize("form", ["paper", "page"])
def test_nearby_negatives_weigh_more(form):
    """Moving a confusable negative from far away to next door raises the loss."""
    z, pts, cll, ll, _ = _case(4, torch.float64, B=1, K=2)
    pts[0, 1] = pts[0, 0] * 0.99  # a negative as close to z as the positive
    loss = GeoWeightedContrastive(Poincare(), tau=0.5, sigma_km=300.0, lam=3.0,
                                  form=form)
    cll[0, 1] = ll[0] + torch.tensor([0.0, 90.0], dtype=torch.float64)  # far
    far = loss(z, pts, cll, ll)["loss"]
    cll[0, 1] = ll[0] + torch.tensor([0.05, 0.0], dtype=torch.float64)  # 5 km away
    near = loss(z, pts, cll, ll)["loss"]
    assert near > far + 0.3


def test_far_negatives_still_count_in_the_paper_form():
    """The point of the paper's form: a confusable negative 10,000 km away still costs as much
    as in plain InfoNCE (weight 1); in the page's form it costs nothing."""
    z, pts, cll, ll, _ = _case(4, torch.float64, B=1, K=2)
    pts[0, 1] = pts[0, 0] * 0.99
    cll[0, 1] = ll[0] + torch.tensor([0.0, 90.0], dtype=torch.float64)
    paper = GeoWeightedContrastive(Poincare(), tau=0.5, sigma_km=300.0)(z, pts, cll, ll)
    page = GeoWeightedContrastive(Poincare(), tau=0.5, sigma_km=300.0, form="page")(
        z, pts, cll, ll)
    assert torch.allclose(paper["loss"], _infonce(paper["logits"]))
    assert page["loss"] < 1e-6


def test_gradients_finite_and_reach_both_sides():
    z, pts, cll, ll, valid = _case(5, torch.float32)
    z = z.clone().requires_grad_(True)
    pts = pts.clone().requires_grad_(True)
    out = GeoWeightedContrastive(Poincare(), tau=0.1)(z, pts, cll, ll, valid)
    out["loss"].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        GeoWeightedContrastive(Poincare(), tau=0.0)
    with pytest.raises(ValueError, match="lam"):
        GeoWeightedContrastive(Poincare(), lam=-1.0)
    with pytest.raises(ValueError, match="form"):
        GeoWeightedContrastive(Poincare(), form="blog")
    with pytest.raises(ValueError):
        Poincare(c=-1.0)
    z, pts, cll, ll, valid = _case(6, torch.float64)
    valid[0, 0] = False
    with pytest.raises(ValueError, match="positive"):
        GeoWeightedContrastive(Poincare())(z, pts, cll, ll, valid)


@pytest.mark.parametrize("form", ["paper", "page"])
@pytest.mark.parametrize("name", ["poincare", "euclidean", "sphere", "lorentz"])
def test_full_table_equals_per_row_candidates(name, form):
    """``full`` (one table for the batch) equals the per-row loss with every entity as a
    candidate and the positive moved to column 0."""
    from hiergeo.geometry.spaces import make_space

    space = make_space(name)
    g = torch.Generator().manual_seed(5)
    B, N, D = 6, 9, 4
    z = space.query(torch.randn(B, D, generator=g, dtype=torch.float64))
    pts = space.init_entities(project(expmap0(torch.randn(N, D, generator=g,
                                                          dtype=torch.float64) * 1.5)))
    ell = torch.stack([torch.rand(N, generator=g, dtype=torch.float64) * 120 - 60,
                       torch.rand(N, generator=g, dtype=torch.float64) * 340 - 170], -1)
    ll = ell[torch.randint(N, (B,), generator=g)] + 0.5
    target = torch.randint(N, (B,), generator=g)
    loss = GeoWeightedContrastive(space, tau=0.7, sigma_km=800.0, lam=2.5, form=form)
    full = loss.full(z, pts, ell, ll, target)["loss"]
    order = torch.stack([torch.cat([t[None], torch.tensor([j for j in range(N) if j != t])])
                         for t in target])
    rows = loss(z, pts[order], ell[order], ll)["loss"]
    assert torch.allclose(full, rows, rtol=1e-6)


def test_parent_hinge_is_zero_until_a_child_strays():
    from hiergeo.losses import parent_hinge

    sp = Poincare()
    child = project(expmap0(torch.tensor([[0.5, 0.2], [1.0, -1.0]], dtype=torch.float64)))
    parent = project(expmap0(torch.tensor([[0.4, 0.1], [0.2, 0.0]], dtype=torch.float64)))
    margin = sp.pair(child, parent)
    assert float(parent_hinge(sp, child, parent, margin)) == 0.0
    assert float(parent_hinge(sp, child, parent, margin - 0.25)) == pytest.approx(0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_pairs_match_plain_loop(dtype, seed):
    """Uneven groups as flat pairs (loss.scope=siblings) equal the per-row plain loop."""
    z, pts, cll, ll, valid = _case(seed, dtype)
    sizes = valid.sum(1)
    # flat pairs: each row's valid columns, the positive (column 0) placed last to check
    # that its position does not matter
    q, p, c2, pos = [], [], [], []
    for b in range(len(z)):
        cols = [k for k in range(1, pts.shape[1]) if valid[b, k]] + [0]
        q += [b] * len(cols)
        p += [pts[b, k] for k in cols]
        c2 += [cll[b, k] for k in cols]
        pos += [k == 0 for k in cols]
    assert sum(sizes.tolist()) == len(q)
    fn = GeoWeightedContrastive(Poincare(1.0), tau=0.5, sigma_km=500.0, lam=2.0)
    out = fn.grouped(z, torch.stack(p), torch.stack(c2), ll, torch.tensor(q),
                     torch.tensor(pos))
    ref = _reference(z.double().tolist(), pts.tolist(), cll.tolist(), ll.tolist(),
                     valid.tolist(), 1.0, 0.5, 500.0, lam=2.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(float(out["loss"]) - ref) < tol * max(1.0, abs(ref))
    with pytest.raises(ValueError, match="exactly one positive"):
        fn.grouped(z, torch.stack(p), torch.stack(c2), ll, torch.tensor(q),
                   torch.zeros(len(q), dtype=torch.bool))


# -- blocked full-candidate loss ---------------------------------------------------------
def _level(name, B=6, N=11, D=4, seed=7, targets=None):
    """A space, queries, an entity table with centroids, sample locations and targets."""
    from hiergeo.geometry.spaces import make_space

    space = make_space(name)
    g = torch.Generator().manual_seed(seed)
    z = space.query(torch.randn(B, D, generator=g, dtype=torch.float64))
    pts = space.init_entities(project(expmap0(torch.randn(N, D, generator=g,
                                                          dtype=torch.float64) * 1.5)))
    ell = torch.stack([torch.rand(N, generator=g, dtype=torch.float64) * 120 - 60,
                       torch.rand(N, generator=g, dtype=torch.float64) * 340 - 170], -1)
    target = torch.randint(N, (B,), generator=g) if targets is None else torch.tensor(targets)
    ll = ell[target] + torch.randn(B, 2, generator=g, dtype=torch.float64) * 0.5
    return space, z, pts, ell, ll, target


def _value_and_grads(fn, z, pts, ell, ll, target, block):
    z = z.detach().clone().requires_grad_(True)
    pts = pts.detach().clone().requires_grad_(True)
    out = fn.full(z, pts, ell, ll, target, block=block)
    out["loss"].backward()
    return out, z.grad, pts.grad


@pytest.mark.parametrize("name", ["poincare", "lorentz", "euclidean", "sphere"])
@pytest.mark.parametrize("form,lam,sigma", [("paper", 2.5, 800.0), ("page", 1.0, 800.0),
                                            ("paper", 0.0, 800.0), ("paper", 2.0, math.inf),
                                            ("page", 1.0, math.inf)])
@pytest.mark.parametrize("block", [1, 3, 4, 11, 50])
def test_blocked_full_equals_one_shot(name, form, lam, sigma, block):
    """Same loss, per-sample losses and gradients (z and entities) whatever the block: blocks
    that do not divide N = 11, of one column, of N and beyond; targets in the first and the
    last block."""
    data = _level(name, targets=[0, 10, 5, 0, 9, 3])
    fn = GeoWeightedContrastive(data[0], tau=0.7, sigma_km=sigma, lam=lam, form=form)
    ref, gz_ref, gp_ref = _value_and_grads(fn, *data[1:], block=None)
    got, gz, gp = _value_and_grads(fn, *data[1:], block=block)
    assert "logits" not in got
    assert torch.allclose(got["per_sample"], ref["per_sample"], rtol=1e-10, atol=1e-12)
    assert torch.allclose(got["loss"], ref["loss"], rtol=1e-10, atol=1e-12)
    assert torch.allclose(gz, gz_ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gp, gp_ref, rtol=1e-9, atol=1e-12)
    assert gp.abs().sum() > 0 and gz.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_full_float32_queries(seed):
    """Logits in the queries' dtype, as in the one-shot path."""
    space, z, pts, ell, ll, target = _level("poincare", B=9, N=37, seed=seed)
    fn = GeoWeightedContrastive(space, tau=0.25, sigma_km=300.0, lam=1.0)
    ref, gz_ref, gp_ref = _value_and_grads(fn, z.float(), pts, ell, ll, target, None)
    got, gz, gp = _value_and_grads(fn, z.float(), pts, ell, ll, target, 8)
    assert got["loss"].dtype == torch.float32 and gz.dtype == torch.float32
    assert torch.allclose(got["loss"], ref["loss"], rtol=1e-5)
    assert torch.allclose(gz, gz_ref, rtol=1e-4, atol=1e-6)
    assert torch.allclose(gp, gp_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("block", [2, 5])
def test_blocked_full_zeroes_the_positive_weight_in_its_block(block):
    """Each sample sits on its target's centroid, where the weight of a negative would be
    1 + lam = 51: against a plain loop, a block that forgets to zero the target's weight (or
    zeroes another column) is off by up to log 51."""
    space, z, pts, ell, ll, target = _level("poincare", B=4, N=7, targets=[6, 1, 4, 6])
    ll = ell[target].clone()
    fn = GeoWeightedContrastive(space, tau=0.5, sigma_km=500.0, lam=50.0)
    got = fn.full(z, pts, ell, ll, target, block=block)["per_sample"]
    for b in range(len(z)):
        s = [-_poincare(z[b].tolist(), pts[j].tolist(), 1.0) / 0.5 for j in range(len(pts))]
        t = int(target[b])
        denom = math.exp(s[t]) + sum(
            _weight(_haversine(ll[b].tolist(), ell[j].tolist()), 500.0, 50.0, "paper")
            * math.exp(s[j]) for j in range(len(pts)) if j != t)
        assert float(got[b]) == pytest.approx(-s[t] + math.log(denom), abs=1e-9)


@pytest.mark.parametrize("name", ["poincare", "lorentz", "euclidean", "sphere"])
def test_blocked_full_gradcheck(name):
    space, z, pts, ell, ll, target = _level(name, B=3, N=5, D=3, targets=[4, 0, 2])
    fn = GeoWeightedContrastive(space, tau=0.5, sigma_km=700.0, lam=1.5)
    z, pts = z.clone().requires_grad_(True), pts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: fn.full(a, b, ell, ll, target, block=2)["per_sample"], (z, pts))


def test_blocked_full_never_builds_a_batch_by_table_tensor():
    """Forward makes nothing larger than ``B x block``; backward nothing larger than that or
    the gradient of the table ``N x D``. The one-shot path, watched the same way, does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    B, N, D, block = 16, 64, 3, 4
    space, z, pts, ell, ll, target = _level("poincare", B=B, N=N, D=D)
    fn = GeoWeightedContrastive(space, tau=0.5, sigma_km=500.0)
    z, pts = z.clone().requires_grad_(True), pts.clone().requires_grad_(True)
    sizes = {}
    for blk in (block, None):
        with Largest() as fwd:
            out = fn.full(z, pts, ell, ll, target, block=blk)
        with Largest() as bwd:
            out["loss"].backward()
        sizes[blk] = fwd.numel, bwd.numel
    assert 0 < sizes[block][0] <= B * block
    assert 0 < sizes[block][1] <= max(B * block, N * D)
    assert sizes[None][0] >= B * N and sizes[None][1] >= B * N


def test_block_size():
    from hiergeo.losses.contrastive import BLOCK_TEMPS, CPU_BLOCK_BUDGET, block_size

    assert block_size(4096, 165_000, "cpu") == CPU_BLOCK_BUDGET // (BLOCK_TEMPS * 8 * 4096)
    # batch 4096 over 165k entities in 8 GiB: blocks of 16k entities
    assert block_size(4096, 165_000, "cpu", budget_bytes=8 * 2**30) == 16384
    assert block_size(4096, 10, "cpu", budget_bytes=8 * 2**30) == 10
    assert block_size(10**9, 10, "cpu") == 1
    assert block_size(0, 5, "cpu") == 5
    with pytest.raises(ValueError, match="block"):
        space, z, pts, ell, ll, target = _level("poincare")
        GeoWeightedContrastive(space).full(z, pts, ell, ll, target, block=0)


def test_a_new_loss_function_is_one_registered_class(tmp_path, cache_env):
    """Adding a loss function is one class, registered by name, in one file: the config
    accepts its name and the trainer trains with it at every level (hiergeo.losses.objective
    shows the same example)."""
    from hiergeo.losses import LOSS_CLASSES, LevelLoss, LevelQueries, register_loss
    from hiergeo.train import ConfigError, load_config, run

    calls = []

    @register_loss("toy_nearest")
    class Nearest(LevelLoss):
        def __call__(self, q: LevelQueries) -> torch.Tensor:
            calls.append(q.level)
            return self.space.pair(q.z, q.rows(q.positive)).mean()

    try:
        with pytest.raises(ConfigError, match="loss.margin is for the loss functions"):
            load_config("smoke", ["loss.function=toy_nearest", "loss.margin=0.5"])
        out = run(load_config("smoke", [f"run.out={tmp_path}", "run.id=toy", "optim.max_steps=2",
                                        "loss.function=toy_nearest"]))
        assert calls[:4] == [0, 1, 2, 3] and len(calls) >= 8  # every level, both steps
        assert 0 <= out["acc_country"] <= 1
        assert "function: toy_nearest" in (tmp_path / "toy" / "config.yaml").read_text()
    finally:
        del LOSS_CLASSES["toy_nearest"]
    with pytest.raises(ConfigError, match="loss.function must be one of"):
        load_config("smoke", ["loss.function=toy_nearest"])
    # a process that has not registered it still evaluates the run; resuming refuses by name
    from hiergeo.evaluate import load_run

    assert load_run(tmp_path / "toy")[0].loss.function == "toy_nearest"
    with pytest.raises(ConfigError, match="toy_nearest is not registered in this process"):
        run(resume=tmp_path / "toy")


def test_block_size_on_a_gpu_is_capped(monkeypatch):
    """On CUDA the default budget is CUDA_BLOCK_CAP, or half the free memory when less (the
    free memory faked: no GPU needed); a budget given (hardware.loss_memory_gb) wins."""
    from hiergeo.losses import contrastive as c

    per_column = c.BLOCK_TEMPS * 8 * 4096
    monkeypatch.setattr(c, "cuda_budget", lambda device: 70 * 2**30)  # an H200's half
    assert c.block_size(4096, 165_000, "cuda:0") == c.CUDA_BLOCK_CAP // per_column
    monkeypatch.setattr(c, "cuda_budget", lambda device: 2**30)  # a busy small card
    assert c.block_size(4096, 165_000, "cuda:0") == 2**30 // per_column
    assert c.block_size(4096, 165_000, "cuda:0", budget_bytes=32 * 2**30) == 65536
    with pytest.raises(ValueError, match="budget must be positive"):
        c.block_size(4096, 165_000, "cuda:0", budget_bytes=0)


def test_the_trainer_hands_its_loss_memory_to_the_blocked_loss(tmp_path, cache_env,
                                                               monkeypatch):
    """hardware.loss_memory_gb reaches block_size from the trainer (full candidates over the
    level, the blocked loss)."""
    from hiergeo.losses import levels
    from hiergeo.train import load_config, run

    seen = []
    real = levels.block_size
    monkeypatch.setattr(levels, "block_size",
                        lambda b, n, dev, budget=None: seen.append(budget) or real(b, n, dev,
                                                                                  budget))
    run(load_config("smoke", [f"run.out={tmp_path}", "run.id=mem", "optim.max_steps=1",
                              "loss.scope=level", "loss.candidates=full",
                              "hardware.loss_memory_gb=0.25"]))
    assert seen and set(seen) == {2**28}
