"""The retrieval memory's index (hiergeo.predict.memory_index): exact and FAISS IVF-PQ behind
one surface, built a block at a time, chosen by size, saved with a run, exported and read back
memory-mapped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hiergeo.predict import memory_index as mi
from hiergeo.predict.memory import Memory


def _clustered(n: int, d: int, centres: int = 50, seed: int = 0):
    """Rows around ``centres`` random directions (neighbours mean something) and queries
    near some of them."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    x = c[torch.randint(0, centres, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    m = min(300, n)
    q = x[:m] + 0.2 * torch.randn(m, d, generator=g)
    return x, q


class CountingRows:
    """A lazy view that records how many rows each read asks for (a store stands here)."""

    def __init__(self, x):
        self.x, self.reads = x, []

    @property
    def shape(self):
        return tuple(self.x.shape)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        out = self.x[idx] if not isinstance(idx, np.ndarray) else self.x[torch.from_numpy(idx)]
        self.reads.append(len(out))
        return out


def _recall(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a[:, :, None] == b[:, None, :]).any(2).float().mean().item()


def test_ivfpq_finds_the_exact_neighbours_and_reads_a_block_at_a_time(monkeypatch):
    monkeypatch.setattr(mi, "BLOCK", 1000)
    x, q = _clustered(6000, 64)
    rows = CountingRows(x)
    f = mi.build_index(rows, "ivfpq", nprobe=16)  # a quarter of its 64 lists
    assert isinstance(f, mi.FaissIndex) and f.ntotal == 6000 and f.dim == 64
    assert max(rows.reads) <= 1000  # never the whole store at once
    e = mi.build_index(x, "exact")
    qn = torch.nn.functional.normalize(q, dim=1)
    se, ie = e.search(qn, 20)
    rows.reads.clear()
    sf, i_f = f.search(qn, 20)  # re-ranked: 4 x 20 candidates' rows read
    assert sum(rows.reads) <= 300 * 80 and max(rows.reads) <= 256 * 80
    f.params["refine"] = 1
    sc, ic = f.search(qn, 20)  # the codes alone
    assert _recall(i_f, ie) > 0.9 and _recall(i_f, ie) > _recall(ic, ie)
    same = i_f[:, 0] == ie[:, 0]
    assert same.float().mean() > 0.95
    assert torch.allclose(sf[same, 0], se[same, 0], atol=2e-3)  # exact cosines (float16 rows)
    err = (sc[:, 0] - se[:, 0]).abs()  # the codes' similarities: close, not equal
    assert 0.003 < err.mean() < 0.05 and err.max() < 0.2
    assert f.nbytes == 6000 * (f.params["m"] + 8) < e.nbytes


def test_auto_is_exact_while_the_rows_fit_and_ivfpq_above():
    x, _ = _clustered(3000, 32)
    assert mi.build_index(x, "auto", exact_max_gb=1.0).kind == "exact"
    auto = mi.build_index(x, "auto", exact_max_gb=3000 * 32 * 2 / 2**30 * 0.9)
    assert auto.kind == "ivfpq" and auto.params["nprobe"] == auto.params["nlist"] // 2
    with pytest.raises(ValueError, match="memory_index"):
        mi.build_index(x, "hnsw")
    with pytest.raises(ValueError, match="at least 256 rows"):
        mi.build_index(x[:200], "ivfpq")  # more rows than lists, fewer than a codebook


def test_the_exact_index_is_the_memory_of_before():
    """Memory with the exact index searches as chunked_topk_cosine over its float16 rows."""
    x, q = _clustered(500, 16)
    ids = torch.randint(0, 9, (500, 4))
    mem = Memory(x, ids, k=7, index="exact")
    nb = mem.search(q)
    v, i = mi.chunked_topk_cosine(torch.nn.functional.normalize(q, dim=1), mem.features, 7)
    assert torch.equal(nb.ids, ids[i])
    assert torch.allclose(nb.weight, torch.exp((v.double() - v[:, :1].double()) / 0.05))


def test_saved_index_reads_back_memory_mapped_and_searches_the_same(tmp_path):
    x, q = _clustered(3000, 32)
    f = mi.build_index(x, "ivfpq")
    f.save(tmp_path / "m.faiss")
    back = mi.FaissIndex.load(tmp_path / "m.faiss", f.params, rows=x)
    qn = torch.nn.functional.normalize(q, dim=1)
    assert torch.equal(back.search(qn, 10)[1], f.search(qn, 10)[1])
    (tmp_path / "bad.faiss").write_bytes(b"not an index at all" * 10)
    with pytest.raises(ValueError, match="bad.faiss"):
        mi.FaissIndex.load(tmp_path / "bad.faiss", f.params)


def test_knn_baseline_shares_the_memory_index():
    from types import SimpleNamespace

    from hiergeo.baselines import KNNRetrieval

    x, q = _clustered(3000, 32)
    ids = torch.randint(0, 9, (3000, 4))
    train = SimpleNamespace(x=x, ids=ids, latlon=torch.zeros(3000, 2))
    mem = Memory(x, ids, k=20, index="ivfpq")
    shared = KNNRetrieval(k=20).fit(train, index=mem.index)
    assert shared.index is mem.index  # one copy
    sim, idx = shared.neighbours(q)
    nb = mem.search(q)
    assert np.array_equal(ids.numpy()[idx], nb.ids.numpy())
    with pytest.raises(ValueError, match="rows"):
        KNNRetrieval(k=5).fit(SimpleNamespace(x=x[:10], ids=ids[:10], latlon=None),
                              index=mem.index)


def test_config_refuses_an_unknown_index():
    from hiergeo.config import ConfigError
    from hiergeo.train import load_config

    with pytest.raises(ConfigError, match="memory_index"):
        load_config("smoke", ["eval.memory_index=hnsw"])
    with pytest.raises(ConfigError, match="memory_nprobe"):
        load_config("smoke", ["eval.memory_nprobe=0"])


@pytest.fixture(scope="module")
def ivfpq_run(tmp_path_factory, cache_env):
    """A smoke run (the embedded demo) whose memory is an ivfpq index, with memory weights
    on, and its export."""
    from hiergeo import export
    from hiergeo.model import checkpoint
    from hiergeo.train import load_config, run

    out = tmp_path_factory.mktemp("ivfpq")
    cfg = load_config("smoke", [f"run.out={out}", "run.id=run", "eval.memory_index=ivfpq",
                                "run.val_every=0"])
    run(cfg)
    d = out / "run"
    ck = checkpoint.load(d / checkpoint.NAME)
    ck["model"]["memory_weight"] = torch.full((4,), 0.6, dtype=torch.float64)
    checkpoint.save(d / checkpoint.NAME, ck)
    return d, export.write(export.from_run(d), out / "model")


def test_a_run_keeps_its_ivfpq_index_and_the_export_predicts_as_the_run(ivfpq_run):
    from hiergeo import Geolocator
    from hiergeo.data.splits import load_data
    from hiergeo.evaluate import MEMORY_INDEX_FILE, build_memory, load_run
    from hiergeo.predict import predict

    run_dir, model = ivfpq_run
    assert (run_dir / MEMORY_INDEX_FILE).exists()
    meta = json.loads((model / "model.json").read_text())
    assert meta["memory"]["index"]["kind"] == "ivfpq"
    assert (model / "memory.faiss").exists()
    assert "memory.faiss" in (model / "SHA256SUMS").read_text()
    cfg, m, hier, gz = load_run(run_dir)
    data = load_data(cfg, gz)
    mem = build_memory(cfg, data.train, run_dir=run_dir)  # the saved index, read back
    assert mem.index.kind == "ivfpq" and mem.build_seconds is None  # not built again
    x = data.val.x[:200].float()
    kw = {"beams": cfg.eval.beams, "topk": 5, "coords": cfg.eval.coords,
          "threshold": cfg.eval.threshold}
    want = predict(m, x, hier, cfg.loss.tau, memory=mem, **kw)
    alone = predict(m, x, hier, cfg.loss.tau, **kw)
    assert not np.array_equal(want.level_prob, alone.level_prob)  # the memory matters
    g = Geolocator.load(model)
    assert g.memory.index.kind == "ivfpq"
    got = g.predict_features(x)
    np.testing.assert_array_equal(got["p_city"].to_numpy(), want.path_prob[:, 0, 3])


def test_a_tampered_or_missing_index_is_refused_by_name(ivfpq_run, tmp_path):
    import shutil

    from hiergeo import Geolocator
    from hiergeo.export import ModelFolderError

    _, model = ivfpq_run
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    raw = bytearray((bad / "memory.faiss").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "memory.faiss").write_bytes(bytes(raw))
    with pytest.raises(ModelFolderError, match="memory.faiss"):
        Geolocator.load(bad)
    (bad / "memory.faiss").write_bytes(b"garbage")
    with pytest.raises(ModelFolderError, match="memory.faiss"):
        Geolocator.load(bad, check=False)
    (bad / "memory.faiss").unlink()
    with pytest.raises(ModelFolderError, match="memory.faiss"):
        Geolocator.load(bad, check=False)
    assert Geolocator.load(bad, memory=False).memory is None


def test_the_memory_index_benchmark_reports_export_load_and_projection(ivfpq_run, tmp_path):
    """bench_memory_index.py on a small ivfpq run: every step runs in its own process and the
    figures land in the JSON and the table."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    from hiergeo.data.store import write_store

    run_dir, _ = ivfpq_run
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory_index.py"
    spec = importlib.util.spec_from_file_location("bench_memory_index", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    dim = json.loads((run_dir / "memory_index.json").read_text())["dim"]
    store = write_store(tmp_path / "q", torch.randn(50, dim),
                        pd.DataFrame({"id": [f"q{i}" for i in range(50)],
                                      "latitude": 0.0, "longitude": 0.0}))
    out = tmp_path / "memory_index.json"
    assert bench.main(["--run", str(run_dir), "--store", str(store), "--queries", "50",
                       "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    lm, alone = res["load_memory"], res["load_alone"]
    assert lm["index"]["kind"] == "ivfpq" and lm["queries"] == 50 and lm["queries_per_s"] > 0
    assert alone["memory"] is False and "index" not in alone
    assert res["export"]["memory_faiss_bytes"] > 0
    assert res["osv5m_projection"]["index_bytes"] == 4_894_685 * (128 + 8)
    assert "Projected for OSV-5M" in out.with_suffix(".md").read_text()


def test_without_re_ranking_the_export_carries_no_rows(ivfpq_run, tmp_path):
    """eval.memory_refine=1: the codes' similarities answer, so the export holds the index and
    the ids only, and predicts as the run does with the same setting."""
    import shutil

    import yaml
    from safetensors import safe_open

    from hiergeo import Geolocator, export
    from hiergeo.data.splits import load_data
    from hiergeo.evaluate import build_memory, load_run
    from hiergeo.predict import predict

    run_dir, with_rows = ivfpq_run
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    cfg_path = run2 / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["eval"]["memory_refine"] = 1
    cfg_path.write_text(yaml.safe_dump(raw))
    model = export.write(export.from_run(run2), tmp_path / "model")
    with safe_open(str(model / "memory.safetensors"), framework="pt") as fh:
        assert list(fh.keys()) == ["ids"]
    assert ((model / "memory.safetensors").stat().st_size
            < (with_rows / "memory.safetensors").stat().st_size / 4)
    cfg, m, hier, gz = load_run(run2)
    data = load_data(cfg, gz)
    mem = build_memory(cfg, data.train, run_dir=run2)
    assert mem.index.params["refine"] == 1
    x = data.val.x[:100].float()
    want = predict(m, x, hier, cfg.loss.tau, memory=mem, beams=cfg.eval.beams, topk=5,
                   coords=cfg.eval.coords, threshold=cfg.eval.threshold)
    g = Geolocator.load(model)
    assert g.memory.index.rows is None
    got = g.predict_features(x)
    np.testing.assert_array_equal(got["p_city"].to_numpy(), want.path_prob[:, 0, 3])


def test_a_saved_index_is_rebuilt_when_stale_unreadable_or_not_asked_for(ivfpq_run, tmp_path,
                                                                          caplog):
    """The run's memory.faiss is reused only over the same rows (a changed middle row
    counts), rebuilt with a warning when its files are damaged, and ignored when the config
    asks for exact search."""
    import shutil
    from types import SimpleNamespace

    from hiergeo.data.splits import load_data
    from hiergeo.evaluate import MEMORY_INDEX_META, build_memory, load_run

    run_dir, _ = ivfpq_run
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    cfg, _, _, gz = load_run(run2)
    train = load_data(cfg, gz).train
    assert build_memory(cfg, train, run_dir=run2).build_seconds is None  # reused
    x = train.x[:].clone()
    x[len(x) // 2] += 1.0  # one row in the middle changed
    changed = SimpleNamespace(x=x, ids=train.ids)
    assert build_memory(cfg, changed, run_dir=tmp_path / "elsewhere").build_seconds is not None
    shutil.copy(run2 / "memory.faiss", tmp_path / "keep.faiss")
    shutil.copy(run2 / MEMORY_INDEX_META, tmp_path / "keep.json")
    mem = build_memory(cfg, changed, run_dir=run2)
    assert mem.build_seconds is not None and "other rows" in caplog.text
    shutil.copy(tmp_path / "keep.faiss", run2 / "memory.faiss")
    (run2 / MEMORY_INDEX_META).write_text("{not json")
    caplog.clear()
    mem = build_memory(cfg, train, run_dir=run2)
    assert mem.build_seconds is not None and "cannot be read" in caplog.text
    cfg.eval.memory_index = "exact"
    assert build_memory(cfg, train, run_dir=run2).index.kind == "exact"


def test_too_few_rows_for_ivfpq_fall_back_to_exact_with_a_warning(caplog):
    from types import SimpleNamespace

    from hiergeo.evaluate import build_memory
    from hiergeo.train import load_config

    cfg = load_config("smoke", ["eval.memory_index=ivfpq"])
    x, _ = _clustered(150, 16)
    mem = build_memory(cfg, SimpleNamespace(x=x, ids=torch.zeros(150, 4, dtype=torch.long)))
    assert mem.index.kind == "exact" and "searching exactly instead" in caplog.text


def test_parallel_evaluation_builds_the_index_once(ivfpq_run, tmp_path):
    """Under torchrun every process needs the memory: process 0 builds and keeps the index,
    the other reads it; the figures equal one process's."""
    import os
    import shutil
    import subprocess
    import sys

    from hiergeo.cli.evaluate import main as evaluate_main

    run_dir, _ = ivfpq_run
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    (run2 / "memory.faiss").unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29541", "-m", "hiergeo.evaluate", "--run-dir", str(run2),
           "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("built in") == 1 and (run2 / "memory.faiss").exists()
    assert evaluate_main(["--run", str(run2), "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["eval"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["eval"]
    for k in ("acc_country", "acc_city", "geoscore"):
        assert two[k] == pytest.approx(one[k], abs=1e-9), k
