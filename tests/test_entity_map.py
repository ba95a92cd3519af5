"""Entities from data (model.entities=data) and learnt loss scalars (loss.learn)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hiergeo.config import ConfigError, load_config
from hiergeo.losses import Objective
from hiergeo.model.entity_map import DataEntities, feature_prototypes, spherical_encoding


class _Rows:
    """The two things feature_prototypes reads of a split."""

    def __init__(self, x, ids):
        self.x, self.ids = x, ids

    def inputs(self, rows):
        return self.x[torch.as_tensor(rows)]


# a tree: root 0; countries 1, 2, 3; regions 4, 5 (of 1), 6 (of 2), 7 (of 3); cities 8 (of 4),
# 9 (of 6), 10 (of 7). Samples reach 8 (via 4, 1), 5 (a region without cities), 9 (via 6, 2).
# Country 3 and its region 7 have none, nor do cities 10.
PARENT = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 3, 4, 6, 7])
DEPTH = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])


def _loop(x, ids):
    """The plain loop: per entity the mean of its rows, then the fallbacks as documented."""
    n = len(PARENT)
    proto = [None] * n
    for e in range(n):
        rows = [i for i in range(len(x)) if e in ids[i].tolist()]
        if rows:
            proto[e] = x[rows].double().mean(0)
    for d in range(int(DEPTH.max()), 0, -1):
        for p in range(n):
            if proto[p] is None and int(DEPTH[p]) == d - 1:
                kids = [k for k in range(n) if int(PARENT[k]) == p and proto[k] is not None
                        and int(DEPTH[k]) == d]
                if kids:
                    proto[p] = torch.stack([proto[k] for k in kids]).mean(0)
    mean = x.double().mean(0)
    if proto[0] is None:
        proto[0] = mean
    for d in range(1, int(DEPTH.max()) + 1):
        for e in range(n):
            if proto[e] is None and int(DEPTH[e]) == d:
                proto[e] = proto[int(PARENT[e])]
    return torch.stack([p if p is not None else mean for p in proto]).float()


@pytest.mark.parametrize("block", [1, 3, 100])
def test_prototypes_equal_a_plain_loop(block):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    ids = torch.tensor([[1, 4, 8, -1], [1, 4, 8, -1], [1, 5, -1, -1], [2, 6, 9, -1],
                        [2, 6, 9, -1], [2, 6, 9, -1], [1, 5, -1, -1]])
    proto, counts = feature_prototypes(_Rows(x, ids), PARENT, DEPTH, block=block)
    want = _loop(x, ids)
    torch.testing.assert_close(proto, want, rtol=1e-6, atol=1e-6)
    assert counts.tolist() == [0, 4, 3, 0, 2, 2, 3, 0, 2, 3, 0]
    # the fallbacks took effect: the root from its countries, country 3 from the root, its
    # region and city from it; region 5 (samples of its own) kept them
    torch.testing.assert_close(proto[3], (proto[1] + proto[2]) / 2)
    torch.testing.assert_close(proto[10], proto[3])
    torch.testing.assert_close(proto[5], x[[2, 6]].mean(0))


def test_spherical_encoding_is_fixed_and_unit():
    ll = torch.tensor([[0.0, 0.0], [90.0, 10.0], [-33.9, 151.2]])
    enc = spherical_encoding(ll)
    assert enc.shape == (3, 19) and enc.dtype == torch.float64
    torch.testing.assert_close(enc[:, :3].norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(enc[0, :3], torch.tensor([1.0, 0, 0], dtype=torch.float64))


def _model(small, *extra):
    from hiergeo.model.build import build_model

    cfg = load_config("smoke", ["model.entities=data", "loss.learn=[tau,lam,sigma]",
                                "loss.scope=siblings", *extra])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    return cfg, model, hier


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "euclidean", "sphere"])
@pytest.mark.parametrize("hidden", [0, 16])
def test_gradients_reach_the_map_and_the_learnt_scalars(small, geometry, hidden):
    """Two steps: every parameter (the map, the residual, log tau/lam/sigma) gets a finite
    gradient and moves; the frozen table is what eval mode writes."""
    cfg, model, hier = _model(small, f"model.geometry={geometry}",
                              f"model.entity_hidden={hidden}")
    assert not model.entities.requires_grad
    ids = torch.as_tensor(small.ancestors[hier.level_ids[3].numpy()])
    ll = hier.latlon[hier.level_ids[3]]
    x = torch.randn(len(ids), 12)
    names = {n for n, _ in model.named_parameters() if n != "entities"}
    assert {"log_tau", "log_lam", "log_sigma", "data_entities.residual"} <= names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n != "entities"],
                            lr=1e-2)
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        objective = Objective.build(cfg.loss, model.space, hier, device="cpu",
                                    batch=len(ids), sparse=False)
        terms = objective(model.entity_rows, model(x), ids, ll, gen,
                          parent_margin=model.parent_margin, scalars=model.loss_scalars())
        opt.zero_grad()
        terms["loss"].backward()
        for name, p in model.named_parameters():
            if name == "entities":
                assert p.grad is None
                continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    for name in ("log_tau", "log_lam", "log_sigma", "data_entities.residual"):
        assert not torch.equal(before[name], getattr_path(model, name)), name
    assert "loss_parent" not in terms  # its margins come from the tree
    model.eval()
    idx = torch.arange(len(model.entities))
    torch.testing.assert_close(model.entities.detach(), model.entity_rows(idx).detach())


def getattr_path(obj, name):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def test_learnt_tau_is_what_prediction_uses(small):
    cfg, model, _ = _model(small)
    with torch.no_grad():
        model.log_tau.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log())
    model.fold_learnt_tau_(cfg.loss.tau)
    eff = torch.tensor(cfg.loss.tau, dtype=torch.float64) * model.level_temperature
    torch.testing.assert_close(eff, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))


@pytest.mark.parametrize("override,match", [
    ("model.entities=table", "model.entities must be tree or data"),
    ("model.entity_hidden=-1", "model.entity_hidden"),
    ("loss.learn=[temperature]", "loss.learn takes distinct names"),
    ("loss.learn=[tau,tau]", "loss.learn takes distinct names"),
])
def test_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])


def test_config_errors_that_need_other_keys():
    with pytest.raises(ConfigError, match="streamed full-level loss"):
        load_config("smoke", ["loss.learn=[tau]", "loss.scope=level", "loss.candidates=full"])
    with pytest.raises(ConfigError, match="weight_form=paper"):
        load_config("smoke", ["loss.learn=[lam]", "loss.weight_form=page"])
    with pytest.raises(ConfigError, match="finite loss.sigma_km"):
        load_config("smoke", ["loss.learn=[sigma]", "loss.sigma_km=[.inf,1,1,1]"])
    with pytest.raises(ConfigError, match="encoder=features"):
        load_config("smoke", ["model.entities=data", "model.encoder=timm"])
    with pytest.raises(ConfigError, match="loss.function=geo"):
        load_config("smoke", ["loss.learn=[tau]", "loss.function=proxy_anchor"])


def test_data_entities_shapes():
    m = DataEntities(5, 7, 3, hidden=0, residual=False, latlon=torch.zeros(5, 2),
                     depth=torch.tensor([0, 1, 2, 3, 4]))
    assert m.residual is None and m(torch.tensor([0, 4, 4])).shape == (3, 3)
    with pytest.raises(ValueError, match="shape"):
        m.set_prototypes_(torch.zeros(5, 6))


@pytest.fixture(scope="module")
def data_run(tmp_path_factory, cache_env):
    from hiergeo.train import load_config as lc
    from hiergeo.train import run

    out = tmp_path_factory.mktemp("data_run")
    cfg = lc("smoke", [f"run.out={out}", "run.id=base", "model.entities=data",
                       "loss.learn=[tau,sigma]", "optim.max_steps=12",
                       "run.checkpoint_every=5", "run.val_every=0"])
    return out, run(cfg)


def test_resume_is_exact(data_run, tmp_path, monkeypatch):
    """Interrupt the same run at step 5 (a Ctrl-C: its checkpoint), resume, compare with the
    uninterrupted run: the map, the residual, the learnt scalars, the computed table."""
    from hiergeo.model import checkpoint
    from hiergeo.train import load_config as lc
    from hiergeo.train import loop, run

    out, want = data_run
    real = loop.train_step

    def stop_at_5(tr, idx, x):
        if tr.step == 5:
            raise KeyboardInterrupt
        return real(tr, idx, x)

    monkeypatch.setattr(loop, "train_step", stop_at_5)
    cfg = lc("smoke", [f"run.out={tmp_path}", "run.id=cut", "model.entities=data",
                       "loss.learn=[tau,sigma]", "optim.max_steps=12",
                       "run.checkpoint_every=5", "run.val_every=0"])
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    d = tmp_path / "cut"
    assert checkpoint.load(d / checkpoint.NAME)["step"] == 5
    monkeypatch.setattr(loop, "train_step", real)
    res = run(resume=d)
    for k in ("acc_country", "acc_region", "median_km", "geoscore"):
        assert res[k] == want[k], k
    a = torch.load(out / "base" / checkpoint.NAME, weights_only=True)["model"]
    b = torch.load(d / checkpoint.NAME, weights_only=True)["model"]
    assert "log_tau" in a and "data_entities.prototypes" in a
    bad = [k for k in a if not torch.allclose(a[k], b[k], rtol=0, atol=1e-5)]
    assert not bad


def test_export_round_trip_predicts_as_the_run(data_run, tmp_path):
    """The exported table is the computed points; the exported model predicts as the run."""
    from hiergeo import export
    from hiergeo.data.splits import read_store_split
    from hiergeo.evaluate import load_run
    from hiergeo.geolocate import Geolocator
    from hiergeo.predict import predict

    out, _ = data_run
    run_dir = out / "base"
    cfg, model, hier, gz = load_run(run_dir)
    idx = torch.arange(len(model.entities))
    torch.testing.assert_close(model.entities.detach(), model.entity_rows(idx).detach())
    folder = export.write(export.from_run(run_dir, memory=False, features_only=True),
                          tmp_path / "model")
    store = json.loads((run_dir / "data_report.json").read_text())["source"].split(": ")[-1]
    split, _, _ = read_store_split(store, cfg, gz, "x")
    with torch.no_grad():
        model.memory_weight.zero_()
    want = predict(model, split.all_inputs(), hier, cfg.loss.tau, beams=cfg.eval.beams,
                   topk=1, coords=cfg.eval.coords, threshold=cfg.eval.threshold)
    g = Geolocator.load(folder, device="cpu")
    got = g.predict_features(split.x[:].float())
    np.testing.assert_allclose(got["pred_latitude"].to_numpy(), want.lat, atol=1e-9)
    assert math.isfinite(float(want.lat.sum()))
