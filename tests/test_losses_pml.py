"""The PML losses on the entity table (hiergeo.losses.ablations) against the shipped loss and PML's
own classes; the trainer's ``loss.function`` ablations train."""

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hiergeo.config import ConfigError, load_config
from hiergeo.geometry import expmap0, project
from hiergeo.geometry.pml_distance import SpaceDistance
from hiergeo.geometry.spaces import Euclidean, Lorentz, Poincare, Sphere
from hiergeo.losses import GeoWeightedContrastive
from hiergeo.losses.ablations import EntityProxyAnchor, GeoWeightedProxyLoss, ablation


def _case(seed, B=6, N=9, D=5):
    g = torch.Generator().manual_seed(seed)
    z = project(expmap0(torch.randn(B, D, generator=g, dtype=torch.float64) * 0.8, 1.0), 1.0)
    pts = project(expmap0(torch.randn(N, D, generator=g, dtype=torch.float64) * 1.5, 1.0), 1.0)
    ll = torch.stack([torch.rand(B, generator=g, dtype=torch.float64) * 120 - 60,
                      torch.rand(B, generator=g, dtype=torch.float64) * 340 - 170], -1)
    pll = torch.stack([torch.rand(N, generator=g, dtype=torch.float64) * 120 - 60,
                       torch.rand(N, generator=g, dtype=torch.float64) * 340 - 170], -1)
    target = torch.randint(0, N, (B,), generator=g)
    return z, pts, ll, pll, target


def _grads(loss, *inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("space", [Poincare(), Lorentz(), Euclidean(), Sphere()],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("form,lam,block", [("paper", 2.0, 0), ("page", 0.0, 4),
                                            ("paper", 0.5, 3)])
def test_geo_proxy_loss_is_the_shipped_loss(space, form, lam, block):
    z, pts, ll, pll, target = _case(0)
    z, pts = space.init_entities(z), space.init_entities(pts)  # the ball's points, in its space
    z.requires_grad_(True)
    pts.requires_grad_(True)
    shipped = GeoWeightedContrastive(space, tau=0.4, sigma_km=900.0, lam=lam, form=form).full(
        z, pts, pll, ll, target)["loss"]
    pml = GeoWeightedProxyLoss(tau=0.4, sigma_km=900.0, lam=lam, form=form, block=block,
                               distance=SpaceDistance(space))(
        z, target, ref_emb=pts, latlon=ll, ref_latlon=pll)
    torch.testing.assert_close(pml, shipped)
    for a, b in zip(_grads(pml, z, pts), _grads(shipped, z, pts), strict=True):
        torch.testing.assert_close(a, b)


def test_geo_proxy_loss_without_weights_is_pml_ntxent():
    """lam = 0 leaves plain InfoNCE: PML's NTXentLoss in the same space, with the entity
    table as its reference embeddings."""
    z, pts, ll, pll, target = _case(1)
    dist = SpaceDistance(Poincare())
    ours = GeoWeightedProxyLoss(tau=0.3, lam=0.0, distance=dist)(
        z, target, ref_emb=pts, latlon=ll, ref_latlon=pll)
    theirs = pml_losses.NTXentLoss(temperature=0.3, distance=dist)(
        z, target, ref_emb=pts, ref_labels=torch.arange(len(pts)))
    torch.testing.assert_close(ours, theirs)
    weighted = GeoWeightedProxyLoss(tau=0.3, lam=3.0, sigma_km=5000.0, distance=dist)(
        z, target, ref_emb=pts, latlon=ll, ref_latlon=pll)
    assert weighted > ours  # near negatives weigh more: the weights are not ignored


def test_geo_proxy_loss_refuses_what_it_cannot_use():
    z, pts, ll, pll, target = _case(2)
    with pytest.raises(TypeError, match="SpaceDistance"):
        GeoWeightedProxyLoss(distance=pml_losses.NTXentLoss().distance)
    with pytest.raises(TypeError, match="not a similarity"):
        GeoWeightedProxyLoss(distance=SpaceDistance(Poincare(), similarity=True))
    loss = GeoWeightedProxyLoss()
    with pytest.raises(ValueError, match="ref_latlon one per reference"):
        loss(z, target, ref_emb=pts, latlon=ll, ref_latlon=pll[:-1])
    with pytest.raises(ValueError, match="no miner"):
        loss(z, target, (target, target, target), ref_emb=pts, latlon=ll, ref_latlon=pll)
    with pytest.raises(ValueError, match="no ref_labels"):
        loss(z, target, ref_emb=pts, ref_labels=target, latlon=ll, ref_latlon=pll)


def test_entity_proxy_anchor_is_pml_proxy_anchor():
    """Proxies passed in give PML's ProxyAnchorLoss with those proxies as its own; the entity
    table keeps its float64 beside float32 queries (PML's class casts its proxies to the
    queries' dtype) and gets the gradient."""
    z, pts, _, _, target = _case(3)
    z = z.float()
    sim = SpaceDistance(Poincare(), similarity=True)
    theirs = pml_losses.ProxyAnchorLoss(len(pts), pts.shape[1], margin=0.2, alpha=4.0,
                                        distance=sim).double()
    with torch.no_grad():
        theirs.proxies.copy_(pts)
    pts = pts.clone().requires_grad_(True)
    ours = EntityProxyAnchor(margin=0.2, alpha=4.0, distance=sim)
    value = ours(z, target, ref_emb=pts)
    torch.testing.assert_close(value, theirs(z, target), rtol=1e-5, atol=1e-5)
    (grad,) = _grads(value, pts)
    assert pts.dtype == torch.float64 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert "proxies" not in dict(ours.named_parameters())
    with pytest.raises(ValueError, match="no ref_labels"):
        ours(z, target, ref_emb=pts, ref_labels=torch.arange(len(pts)))


def _at(d, direction):
    """A point of the ball at distance ``d`` from the origin (c = 1), along ``direction``
    (``expmap0`` of a tangent vector of norm d / 2)."""
    v = torch.tensor(direction, dtype=torch.float64)
    return expmap0(v / v.norm() * d / 2, 1.0)


@pytest.mark.parametrize("function", ["proxy_anchor", "contrastive"])
def test_ablations_push_near_negatives_and_pull_positives(function):
    """Queries at the origin, their entity at distance 1 and another entity further or nearer:
    a nearer negative (or a further positive) costs more, as each loss is meant to. (Two
    queries: PML's pair losses return 0 when every index tensor holds one pair or none.)"""
    fn = ablation(function, Poincare(), tau=0.5)
    z, label = torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0, 0])

    def value(d_pos, d_neg):
        return fn(z, label, torch.stack([_at(d_pos, [1, 0]), _at(d_neg, [0, 1])])).item()

    assert value(1.0, 0.5) > value(1.0, 3.0) + 0.1
    # the positive beyond the negative (the miner keeps pairs only near such a confusion)
    assert value(2.6, 2.5) > value(1.0, 2.5) + 0.1


def test_proxy_anchor_margin_is_a_margin():
    """A larger margin asks for more, so the loss rises with it (with PML's formulas applied
    to a distance instead of a similarity it fell)."""
    _, pts, _, _, target = _case(5, B=16, N=6)
    z = Poincare().query(torch.randn(16, pts.shape[1], dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(5)))
    values = [ablation("proxy_anchor", Poincare(), 0.5, m)(z, target, pts).item()
              for m in (0.1, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("function", ["proxy_anchor", "contrastive"])
def test_ablation_labels_must_be_rows(function):
    _, pts, _, _, _ = _case(6, B=4, N=5)
    z = torch.zeros(3, pts.shape[1], dtype=torch.float64)
    fn = ablation(function, Poincare(), 0.5)
    for bad in ([0, 1, 5], [0, -1, 2]):
        with pytest.raises(ValueError, match="rows of the 5 reference points"):
            fn(z, torch.tensor(bad), pts)


def test_ablation_names():
    with pytest.raises(ValueError, match="no PML ablation 'geo'"):
        ablation("geo", Poincare(), 0.1)
    with pytest.raises(ConfigError, match="loss.function must be one of geo, proxy_anchor"):
        load_config("smoke", ["loss.function=triplet"])
    with pytest.raises(ConfigError, match="loss.margin is for the loss functions that take one"):
        load_config("smoke", ["loss.margin=0.5"])  # the geo loss has none
    with pytest.raises(ConfigError, match="loss.margin is for the loss functions that take one"):
        load_config("smoke", ["loss.function=contrastive", "loss.margin=0"])
    with pytest.raises(ConfigError, match="candidates=sampled is for the loss functions"):
        load_config("smoke", ["loss.function=contrastive", "loss.candidates=sampled"])
    cfg = load_config("smoke", ["loss.function=contrastive", "loss.margin=0.5"])
    assert cfg.loss.margin == 0.5
