"""The trainer: config, a smoke run end to end, resume after SIGKILL, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hiergeo.data.splits import DataError
from hiergeo.data.store import FeatureStore, write_store
from hiergeo.train import ConfigError, load_config, run

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = ROOT.parent / "shared" / "images"


# -- config ----------------------------------------------------------------------------
def test_config_presets_and_overrides(tmp_path):
    cfg = load_config(None)
    assert cfg.preset == "demo" and cfg.optim.entity_optimizer == "sparse"
    cfg = load_config("smoke", ["optim.lr=1e-3", "loss.tau=[0.2,0.3,0.4,0.5]",
                                "model.geometry=sphere", "data.train=null"])
    assert cfg.optim.lr == 1e-3 and cfg.loss.tau == [0.2, 0.3, 0.4, 0.5]
    assert cfg.model.geometry == "sphere" and cfg.data.train is None
    f = tmp_path / "mine.yaml"
    f.write_text("base: smoke\noptim:\n  batch_size: 8\n")
    cfg = load_config(f)
    assert cfg.optim.batch_size == 8 and cfg.model.hidden == 64 and cfg.preset == "mine"
    # the resolved config round-trips
    from hiergeo.config import from_dict

    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.batch_size=1.5", "optim.batch_size: expected an integer"),
    ("model.geometry=hyperbolic", "model.geometry must be one of"),
    ("loss.tau=[1,2]", "loss.tau needs 4 values"),
    ("run.overwrite=maybe", "expected true/false"),
    ("optim", "not key.sub=value"),
    ("loss.lam=[1,1,1]", "loss.lam needs 4 values"),
    ("loss.lam=[1,-1,1,1]", "loss.lam must be finite and >= 0"),
    ("loss.weight_form=blog", "loss.weight_form must be one of paper, page"),
    ("loss.n_random=0", "loss.n_random must be >= 1"),
    ("loss.n_siblings=-1", "loss.n_siblings and loss.n_cousins must be >= 0"),
    ("optim.warmup=1.0", "optim.warmup is a share of the run's steps"),
    ("optim.warmup=-0.1", "optim.warmup is a share of the run's steps"),
    ("optim.warmup_steps=100", "'optim.warmup_steps' is gone; use optim.warmup"),
    ("data.split_cell_km=0", "data.split_cell_km must be a positive number"),
    ("data.split_min_km=-1", "data.split_min_km must be >= 0"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])


def test_warmup_follows_the_run_length():
    """The warm-up is a share of the run: 5% of 100 steps or of 100,000 steps."""
    from hiergeo.train.optim import lr_lambda as _lr_lambda

    cfg = load_config("smoke", ["optim.warmup=0.05", "optim.min_lr_ratio=0.0"])
    for total in (100, 100_000):
        f = _lr_lambda(cfg, total)
        warm = total // 20
        assert f(0) == pytest.approx(1 / warm) and f(warm - 1) == pytest.approx(1.0)
        assert f(warm) == pytest.approx(1.0) and f(total - 1) < 1e-3
        assert all(f(i) < f(i + 1) for i in range(warm - 1))
    f = _lr_lambda(load_config("smoke", ["optim.warmup=0"]), 10)
    assert f(0) == pytest.approx(1.0)


def test_osv5m_preset_validates_on_training_data():
    """The test store is never the validation split: val is carved from the training store."""
    cfg = load_config("osv5m")
    assert cfg.data.val is None and "test" not in str(cfg.data.train)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="presets: default, demo, osv5m, photos, smoke"):
        load_config("nope")


# -- a whole run -------------------------------------------------------------------------
def test_smoke_run_writes_everything(smoke_run):
    d, res = smoke_run
    for f in ["config.yaml", "metrics.json", "log.csv", "per_country.csv", "per_country.md",
              "checkpoint.pt", "predictions.parquet", "data_report.json"]:
        assert (d / f).exists(), f
    assert list((d / "tensorboard").glob("events.*"))
    m = json.loads((d / "metrics.json").read_text())
    assert m == json.loads(json.dumps(res, default=float))
    split = json.loads((d / "data_report.json").read_text())["split"]
    assert split["method"] == "cells" and split["val"] == m["n"]
    assert split["train"] + split["val"] + split["dropped_within_min_km"] == 1800  # 300 x 6
    # far above chance (1 in 246 countries), even after 50 steps
    assert m["acc_country"] > 0.2 and m["top5_country"] > 0.4
    assert m["n"] > 100 and 0 < m["median_km"] < 20_000
    log = pd.read_csv(d / "log.csv")
    assert log["step"].is_monotonic_increasing and log["step"].iloc[-1] == m["steps"]
    assert log["val_top1_country"].notna().any() and log["samples_per_s"].notna().any()
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert ck["step"] == m["steps"] and ck["model"]["entities"].dtype == torch.float64
    pc = pd.read_csv(d / "per_country.csv", keep_default_na=False)
    assert pc["n"].sum() == m["n"]
    assert abs(pc["hits_city"].sum() / pc["n_city"].sum() - m["acc_city"]) < 1e-12


def test_existing_run_is_not_overwritten(smoke_run, cache_env):
    d, _ = smoke_run
    cfg = load_config("smoke", [f"run.out={d.parent}", "run.id=base"])
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg)


def test_resume_after_sigkill_reaches_the_same_result(smoke_run, tmp_path):
    """Kill a run with SIGKILL after its first checkpoint, resume it, compare."""
    base, _ = smoke_run
    env = {**os.environ, "HIERGEO_CACHE": str(Path(os.environ["HIERGEO_CACHE"]))}
    cmd = [sys.executable, "-m", "hiergeo.train", "--config", "smoke",
           f"run.out={tmp_path}", "run.id=killed", "run.tensorboard=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()  # it really died mid-run
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < json.loads((base / "metrics.json").read_text())["steps"]
    res = run(resume=tmp_path / "killed")
    want = json.loads((base / "metrics.json").read_text())
    for k in ["acc_country", "acc_region", "acc_subregion", "acc_city", "mean_km",
              "median_km", "geoscore", "top5_city"]:
        assert res[k] == want[k], k
    a = torch.load(base / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(ckpt, weights_only=True)["model"]
    # the same to float rounding: BLAS kernels may sum in another order in another process
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    log = pd.read_csv(tmp_path / "killed" / "log.csv")
    assert log["step"].is_unique  # no steps logged twice across the kill


def test_ddp_two_cpu_processes(tmp_path, cache_env, smoke_run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "hiergeo.train", "--config", "smoke",
           f"run.out={tmp_path}", "run.id=ddp", "optim.max_steps=12", "run.val_every=0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ddp_params_in_sync"] is True and m["steps"] == 12


def _torchrun(tmp_path, port, *args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ddp_last_batch_smaller_than_the_world(tmp_path, cache_env):
    """17 samples in batches of 8: the last batch has one sample for two ranks. Before the
    fix rank 1 got none, its backward() raised and torchrun stopped the run."""
    train, val = _store(tmp_path / "train", n=17), _store(tmp_path / "val", n=6, seed=1)
    r = _torchrun(tmp_path, 29519, "-m", "hiergeo.train", "--config", "smoke",
                  f"run.out={tmp_path}", "run.id=short", f"data.train={train}",
                  f"data.val={val}", "data.feature_dim=16", "optim.batch_size=8",
                  "optim.epochs=3", "run.val_every=0")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert m["steps"] == 6 and m["ddp_params_in_sync"] is True  # 2 whole batches per epoch


def test_ddp_evaluation_gathers_the_same_predictions(smoke_run, tmp_path, cache_env):
    """Two processes predict half the rows each; process 0 gathers them and writes the same
    metrics and predictions as one process."""
    from hiergeo.cli.evaluate import main as evaluate_main

    run_dir, _ = smoke_run
    assert evaluate_main(["--run", str(run_dir), "--out", str(tmp_path / "one")]) == 0
    r = _torchrun(tmp_path, 29523, "-m", "hiergeo.evaluate", "--run-dir", str(run_dir), "--out",
                  str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["eval"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["eval"]
    assert two["processes"] == 2 and one["processes"] == 1
    for k in ["acc_country", "acc_region", "acc_subregion", "acc_city", "geoscore", "top5_city"]:
        assert two[k] == pytest.approx(one[k], abs=1e-9), k
    a = pd.read_parquet(tmp_path / "one" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "two" / "predictions.parquet")
    assert a["id"].tolist() == b["id"].tolist()
    assert (a["pred_city"] == b["pred_city"]).mean() > 0.99


def test_ddp_final_evaluation_outlasts_the_timeout(tmp_path, cache_env, smoke_run):
    """Process 0 calibrates and evaluates alone at the end (here 25 s, slowed on purpose);
    the others wait for it (a machine whose processes all left could end torchrun's
    rendezvous under process 0), but not under the process group's timeout (here 10 s).
    Before the fix, process 1 failed at the final barrier."""
    r = _torchrun(tmp_path, 29525, str(ROOT / "tests" / "ddp_slow_eval.py"), "25",
                  str(tmp_path), "--config", "smoke", f"run.out={tmp_path}", "run.id=slow",
                  "optim.max_steps=4", "run.val_every=0", "hardware.dist_timeout_s=10")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "slow" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["seconds"] > 25
    written = (tmp_path / "slow" / "metrics.json").stat().st_mtime
    assert float((tmp_path / "rank1.done").read_text()) >= written  # process 1 waited


def test_steps_give_every_rank_a_share():
    from hiergeo.train.batches import StepRows, steps_per_epoch

    assert steps_per_epoch(17, 8, 1) == 3 and steps_per_epoch(17, 8, 2) == 2
    assert steps_per_epoch(18, 8, 2) == 3 and steps_per_epoch(1, 8, 1) == 1
    for n, b, w in [(17, 8, 2), (100, 7, 3), (10, 4, 4), (64, 64, 8), (9, 4, 1)]:
        ranks = [StepRows(0, n, b, r, w) for r in range(w)]
        spe = ranks[0].spe
        for epoch in range(3):
            seen = []
            for step in range(epoch * spe, (epoch + 1) * spe):
                parts = [sr.rows(step) for sr in ranks]
                assert all(len(p) > 0 for p in parts), (n, b, w, step)
                batch = np.concatenate(parts)
                assert len(batch) == min(b, n - (step - epoch * spe) * b)  # the whole batch
                seen.append(batch)
            seen = np.concatenate(seen)
            assert len(np.unique(seen)) == len(seen)  # no sample twice in an epoch
            assert len(seen) >= n - w + 1  # all but a dropped last batch (< w samples)
    for n, b, w in [(1, 8, 2), (100, 4, 8)]:
        with pytest.raises(ValueError, match="every process needs a sample"):
            StepRows(0, n, b, 0, w)


def test_ddp_ranks_embed_the_tree_once(tmp_path, cache_env, monkeypatch):
    """Rank 0 embeds the tree into the cache; rank 1 and later runs read it."""
    from hiergeo.embedding import api

    cache = tmp_path / "cache"
    monkeypatch.setenv("HIERGEO_CACHE", str(cache))
    r = _torchrun(tmp_path, 29521, "-m", "hiergeo.train", "--config", "smoke",
                  f"run.out={tmp_path}", "run.id=emb", "optim.max_steps=2", "run.val_every=0",
                  "eval.calibrate=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("embedding the tree") == 1, r.stderr[-3000:]  # one process did
    folders = list((cache / "embeddings").iterdir())
    assert len(folders) == 1 and (folders[0] / "points.safetensors").exists()
    assert not list(folders[0].glob("*.tmp"))
    calls = []
    real = api.embed_tree
    monkeypatch.setattr(api, "embed_tree", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(load_config("smoke", [f"run.out={tmp_path}", "run.id=again", "optim.max_steps=1",
                              "run.val_every=0", "eval.calibrate=false"]))
    assert calls == []  # read from the cache


# -- bad input ---------------------------------------------------------------------------
def _store(path, n=40, dim=16, seed=0, **cols):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(n)],
                          "latitude": rng.uniform(40, 50, n), "longitude": rng.uniform(0, 10, n),
                          **cols})
    return write_store(path, torch.from_numpy(rng.standard_normal((n, dim)).astype("f4")),
                       table)


def _cfg(tmp_path, *extra):
    return load_config("smoke", [f"run.out={tmp_path}", "run.id=bad", "optim.max_steps=2",
                                 *extra])


def test_feature_dim_mismatch(tmp_path, cache_env):
    s = _store(tmp_path / "s")
    with pytest.raises(DataError, match="dimension 16, but the config says data.feature_dim=32"):
        run(_cfg(tmp_path, f"data.train={s}", "data.feature_dim=32"))


def test_nan_features_are_named(tmp_path, cache_env):
    s = _store(tmp_path / "s")
    store = FeatureStore(s)
    x = store.features(torch.float32)
    x[7, 3] = float("nan")
    s2 = write_store(tmp_path / "s2", x, store.index.drop(columns=["shard", "row"]))
    with pytest.raises(DataError, match=r"1 feature vectors contain NaN.*ids \['s7'\]"):
        run(_cfg(tmp_path, f"data.train={s2}"))


def test_labels_outside_the_entity_set(tmp_path, cache_env):
    n = 40
    s = _store(tmp_path / "s", n=n, unique_country=["FR"] * n, unique_region=["Atlantis_FR"] * n,
               **{"unique_sub-region": ["nan"] * n, "unique_city": ["nan"] * n})
    with pytest.raises(DataError, match="labels outside the entity set: {'region': 40}"):
        run(_cfg(tmp_path, f"data.train={s}"))


def test_empty_split(tmp_path, cache_env):
    s = _store(tmp_path / "s", n=1)
    with pytest.raises(DataError, match="too few to split"):
        run(_cfg(tmp_path, f"data.train={s}"))
    empty = write_store(tmp_path / "e", torch.zeros(0, 16),
                        pd.DataFrame({"id": [], "latitude": [], "longitude": []}))
    with pytest.raises(DataError, match="no rows"):
        run(_cfg(tmp_path, f"data.train={_store(tmp_path / 's3')}", f"data.val={empty}"))


# -- every geometry trains ----------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "euclidean", "sphere"])
@pytest.mark.parametrize("entity_optimizer,scope,queries", [
    ("dense", "level", "shared"), ("sparse", "level", "shared"),
    ("dense", "siblings", "shared"), ("sparse", "siblings", "shared"),
    ("dense", "level", "per_level"), ("sparse", "siblings", "per_level")])
def test_backward_smoke_every_geometry(small, geometry, entity_optimizer, scope, queries,
                                       loss_terms):
    """Two optimisation steps: every parameter gets a finite gradient, nothing is NaN."""
    import geoopt

    from hiergeo.model.build import build_model

    cfg = load_config("smoke", [f"model.geometry={geometry}", f"loss.scope={scope}",
                                f"optim.entity_optimizer={entity_optimizer}",
                                f"model.queries={queries}"])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    shape = model(torch.randn(3, 12)).shape
    assert shape[:-1] == ((3, 4) if queries == "per_level" else (3,))
    ids = torch.as_tensor(small.ancestors[hier.level_ids[3].numpy()])
    ll = hier.latlon[hier.level_ids[3]]
    x = torch.randn(len(ids), 12)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n != "entities"])
    cls = (geoopt.optim.SparseRiemannianAdam if entity_optimizer == "sparse"
           else geoopt.optim.RiemannianAdam)
    ent = cls([model.entities], lr=1e-2)
    before = model.entities.detach().clone()
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        terms = loss_terms(cfg, model, hier, model(x), ids, ll, gen,
                           [True, True, False, False])
        opt.zero_grad()
        ent.zero_grad()
        terms["loss"].backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(g).all(), name
        opt.step()
        ent.step()
    assert all(torch.isfinite(v).all() for v in terms.values())
    assert not torch.equal(before, model.entities.detach())


@pytest.mark.parametrize("function", ["proxy_anchor", "contrastive"])
@pytest.mark.parametrize("scope,entity_optimizer", [("siblings", "sparse"), ("level", "dense")])
def test_pml_ablations_reach_every_parameter(small, function, scope, entity_optimizer,
                                            monkeypatch, loss_terms):
    """loss.function's PML ablations: every level's term is theirs and finite, the entity
    table (sparse or dense) and the head get gradients, and only the entities the loss saw
    get one."""
    from hiergeo.losses import LOSS_CLASSES
    from hiergeo.model.build import build_model

    cfg = load_config("smoke", [f"loss.function={function}", f"loss.scope={scope}",
                                f"optim.entity_optimizer={entity_optimizer}",
                                "loss.parent_weight=0"])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    calls = []
    kind = LOSS_CLASSES[function]
    real = kind.__call__
    monkeypatch.setattr(kind, "__call__", lambda self, q: calls.append(q.level) or real(self, q))
    cities = hier.level_ids[3][:3]
    ids = torch.as_tensor(small.ancestors[cities.numpy()])
    terms = loss_terms(cfg, model, hier, model(torch.randn(len(ids), 12)), ids,
                       hier.latlon[cities], torch.Generator(), [True] * 4)
    assert {f"loss_{lvl}" for lvl in ("country", "region", "subregion", "city")} <= set(terms)
    assert calls == [0, 1, 2, 3]  # the ablation, not the geo loss, at every level
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    g = model.entities.grad
    dense = g.to_dense() if g.is_sparse else g
    touched = set(dense.abs().sum(1).nonzero()[:, 0].tolist())
    assert set(ids.flatten().tolist()) <= touched  # every level's positives moved
    if scope == "siblings":  # the siblings of the three cities and of their ancestors
        seen = torch.unique(torch.cat([hier.sibling_pairs(ids[:, j])[1] for j in range(4)]))
        assert touched <= set(seen.tolist())


@pytest.mark.parametrize("scope", ["siblings", "level"])
def test_pml_ablation_references_and_labels(small, scope):
    """Each level's reference entities and each query's label among them, against a list
    built by hand: with siblings the union of the positives' sibling groups, with level the
    whole level; the label is the row of the query's own entity."""
    from hiergeo.losses import LevelQueries, LevelSetup
    from hiergeo.losses.ablations import ablation
    from hiergeo.losses.levels import ProxyAnchorLevel
    from hiergeo.model.build import build_model

    cfg = load_config("smoke", ["loss.function=proxy_anchor", f"loss.scope={scope}"])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    seen = []
    for j in range(4):
        pl = hier.level_ids[j][torch.tensor([0, -1, 0])]  # a repeat, first and last entity
        if scope == "siblings":
            groups = [hier.child_list[hier.child_start[p]:hier.child_start[p] + n].tolist()
                      for p, n in zip(hier.parent[pl].tolist(),
                                      hier.child_count[hier.parent[pl]].tolist(), strict=True)]
            ref = sorted({e for g in groups for e in g})
        else:
            ref = hier.level_ids[j].tolist()
        labels = torch.tensor([ref.index(e) for e in pl.tolist()])
        zl = torch.randn(len(pl), model.entities.shape[1], dtype=torch.float64) * 0.1
        want = ablation("proxy_anchor", model.space, cfg.loss.tau[j])(
            zl, labels, model.entities[torch.tensor(ref)])
        level = ProxyAnchorLevel(LevelSetup(cfg=cfg.loss, level=j, space=model.space,
                                            hier=hier, full=True))
        got = level(LevelQueries(level=j, z=zl, positive=pl, latlon=hier.latlon[pl],
                                 rows=lambda idx: model.entities[idx], gen=torch.Generator()))
        torch.testing.assert_close(got, want)
        seen.append(len(ref))
    assert max(seen) > 1  # some level had more than one reference to tell apart


def test_pml_ablation_run_end_to_end(tmp_path, cache_env, monkeypatch):
    """A whole run with a PML ablation: trained with it, calibrated, evaluated, the config
    kept."""
    from hiergeo.losses.levels import ProxyAnchorLevel

    calls = []
    real = ProxyAnchorLevel.__call__
    monkeypatch.setattr(ProxyAnchorLevel, "__call__",
                        lambda self, q: calls.append(q.level) or real(self, q))
    out = run(load_config("smoke", [f"run.out={tmp_path}", "run.id=pa", "optim.max_steps=3",
                                    "loss.function=proxy_anchor", "loss.margin=0.2"]))
    assert (tmp_path / "pa" / "metrics.json").exists()
    assert "function: proxy_anchor" in (tmp_path / "pa" / "config.yaml").read_text()
    assert 0 <= out["acc_country"] <= 1
    assert len(calls) >= 3  # three steps, each through the ablation


# -- evaluation from the command line ------------------------------------------------------
def test_evaluate_cli_flat_and_descent(smoke_run, tmp_path, cache_env):
    from hiergeo.cli.evaluate import main

    d, res = smoke_run
    assert main(["--run", str(d), "--out", str(tmp_path / "flat"), "--method", "flat"]) == 0
    flat = json.loads((tmp_path / "flat" / "metrics.json").read_text())["eval"]
    assert main(["--run", str(d), "--out", str(tmp_path / "desc"), "--beams",
                 "500,500,500,500", "--no-memory"]) == 0
    wide = json.loads((tmp_path / "desc" / "metrics.json").read_text())["eval"]
    # beams wide enough to score everything give flat search's answer (the model alone)
    assert wide["top1_city"] == flat["top1_city"] and wide["median_km"] == flat["median_km"]
    assert flat["n"] == res["n"] and not wide["memory"]
    # by default descent uses the run's memory and reproduces the run's own evaluation
    assert main(["--run", str(d), "--out", str(tmp_path / "mem")]) == 0
    mem = json.loads((tmp_path / "mem" / "metrics.json").read_text())["eval"]
    assert mem["memory"] and mem["geoscore"] == res["geoscore"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.yaml").write_text((d / "config.yaml").read_text())
        main(["--run", str(tmp_path / "empty")])


# -- images end to end ---------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_IMAGES / "osv5m" / "labels.csv").exists(), reason="needs ../shared")
def test_train_on_images_through_timm(tmp_path, cache_env):
    cfg = load_config("smoke", [f"run.out={tmp_path}", "run.id=img", "model.encoder=timm",
                                f"data.images={SHARED_IMAGES / 'osv5m' / 'labels.csv'}",
                                "optim.max_steps=2", "optim.batch_size=4", "run.val_every=0",
                                "data.val_fraction=0.3", "hardware.workers=1"])
    res = run(cfg)
    assert res["steps"] == 2 and res["n"] >= 1
    rep = json.loads((tmp_path / "img" / "data_report.json").read_text())
    assert rep["source"].startswith("images:")


def test_undecodable_validation_images_are_left_out(tmp_path):
    """Validation needs every row's answer: images that fail to decode or to preprocess are
    dropped from the split up front, with their reasons."""
    from PIL import Image

    from hiergeo.data.splits import ImageInputs, Split, _decodable

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        Image.new("RGB", (32 + 8 * i, 32), (40 * i, 90, 30)).save(p, quality=90)
        paths.append(str(p))
    (tmp_path / "0.jpg").write_bytes((tmp_path / "0.jpg").read_bytes()[:200])  # truncated

    def transform(img):  # fails on the 56-pixel-wide image, like an odd preprocessing
        if img.width == 56:
            raise ValueError("odd size")
        return torch.zeros(3, 8, 8)

    split = Split(table_=pd.DataFrame({"id": list("abcd")}), latlon=torch.zeros(4, 2),
                  ids=torch.arange(16).reshape(4, 4), images=ImageInputs(paths, transform))
    kept, bad = _decodable(split, "val")
    assert kept.table["id"].tolist() == ["b", "c"] and kept.ids[:, 0].tolist() == [4, 8]
    assert [p for p, _ in bad] == [paths[0], paths[3]]
    assert "preprocessing failed (odd size)" in bad[1][1]
    assert kept.inputs([0, 1]).shape == (2, 3, 8, 8)


def test_ctrl_c_saves_a_checkpoint(tmp_path, cache_env, smoke_run):
    """SIGINT mid-run writes a checkpoint at the last whole step, however long ago the last
    periodic one was; the run then resumes to the end."""
    total = smoke_run[1]["steps"]
    cmd = [sys.executable, "-m", "hiergeo.train", "--config", "smoke", f"run.out={tmp_path}",
           "run.id=int", "run.checkpoint_every=1000", "run.val_every=0"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = tmp_path / "int" / "log.csv"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + 2 log rows
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait() != 0
    ck = torch.load(tmp_path / "int" / "checkpoint.pt", weights_only=True)
    assert 10 <= ck["step"] < total
    res = run(resume=tmp_path / "int")
    assert res["steps"] == total



def test_each_level_trains_its_own_query_point(small, loss_terms):
    """With per-level queries, level j's loss reaches only block j of the head's last layer
    (the outputs that make level j's point)."""
    from gazetteer.keys import LEVELS
    from hiergeo.model.build import build_model

    cfg = load_config("smoke", ["model.queries=per_level", "loss.parent_weight=0"])
    model, hier = build_model(cfg, small, 12, torch.device("cpu"))
    ids = torch.as_tensor(small.ancestors[hier.level_ids[3].numpy()])
    ll = hier.latlon[hier.level_ids[3]]
    x = torch.randn(len(ids), 12, generator=torch.Generator().manual_seed(0))
    last = model.head.net[-1].weight  # [4 * dim, hidden]
    dim = cfg.model.dim
    for j, lvl in enumerate(LEVELS):
        model.zero_grad()
        terms = loss_terms(cfg, model, hier, model(x), ids, ll,
                           torch.Generator().manual_seed(0), [True] * 4)
        terms[f"loss_{lvl}"].backward()
        rows = last.grad.abs().sum(1).reshape(4, dim).sum(1)
        assert rows[j] > 0 and all(rows[i] == 0 for i in range(4) if i != j), (lvl, rows)


def test_configs_from_before_per_level_queries_load_as_shared(tmp_path):
    from hiergeo.config import from_dict

    old = load_config("smoke").to_dict()
    del old["model"]["queries"]
    assert from_dict(old).model.queries == "shared"
    assert load_config("smoke").model.queries == "per_level"
    with pytest.raises(ConfigError, match="memory_k"):
        load_config("smoke", ["eval.memory_k=0"])


def test_numeric_looking_strings_and_zero_intervals(tmp_path, cache_env):
    """A string field takes a numeric-looking value as its text (run.id=2024, in an override
    and in a YAML file, and back from config.yaml); number fields still read "1e-3"; an
    interval of 0 means only at the end."""
    from hiergeo.config import from_dict

    cfg = load_config("smoke", ["run.id=2024", "optim.lr=1e-3", "data.train=007",
                                "loss.sigma_km=[.inf, 500, 150, 50]"])
    assert cfg.run.id == "2024" and cfg.optim.lr == 0.001 and cfg.data.train == "007"
    assert cfg.loss.sigma_km[0] == float("inf")
    f = tmp_path / "c.yaml"
    f.write_text("base: smoke\nrun:\n  id: 2024\noptim:\n  lr: 1e-3\n")
    again = load_config(str(f))
    assert again.run.id == "2024" and again.optim.lr == 0.001
    assert from_dict(yaml.safe_load(cfg.to_yaml())).run.id == "2024"
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config("smoke", ["optim.lr=fast"])
    # numbers as YAML writes them: the text for a string field, the value for a number field
    odd = load_config("smoke", ["run.id=010", "model.max_radius=.inf", "run.seed=0x10",
                                "data.feature_dim=1e3"])
    assert (odd.run.id, odd.model.max_radius, odd.run.seed, odd.data.feature_dim) == (
        "010", float("inf"), 16, 1000)
    assert type(odd.run.id) is str  # a plain string (safe_dump writes config.yaml)
    f.write_text("base: smoke\nrun:\n  id: 1.0e+3\n")
    assert load_config(str(f)).run.id == "1.0e+3"
    for bad in ("optim.grad_clip=.nan", "optim.max_steps=.inf"):
        with pytest.raises(ConfigError):
            load_config("smoke", [bad])
    f.write_text("base: smoke\noptim:\n  grad_clip: nan\n")
    with pytest.raises(ConfigError, match="NaN"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config("smoke", ["run.log_every=-1"])
    res = run(load_config("smoke", [f"run.out={tmp_path}", "run.id=zero", "run.log_every=0",
                                    "run.checkpoint_every=0", "run.val_every=0",
                                    "optim.max_steps=3"]))
    assert res["steps"] == 3 and (tmp_path / "zero" / "checkpoint.pt").exists()
