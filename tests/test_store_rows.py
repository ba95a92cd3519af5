"""Feature stores read, not loaded: StoreFeatures, the index read in batches, lazy splits."""

import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from hiergeo.data import splits as train_data
from hiergeo.data.rows import StoreFeatures
from hiergeo.data.store import FeatureStore, shard_paths, write_store
from hiergeo.train import load_config


def _store(path, n=103, dim=8, shard_size=10, dtype=torch.float16, seed=0, **cols):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, dim)).astype("f4")).to(dtype)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(n)],
                          "latitude": rng.uniform(40, 50, n), "longitude": rng.uniform(0, 10, n),
                          **cols})
    write_store(path, x, table, shard_size=shard_size)
    return x, table


def _features(path, n_shards):
    return StoreFeatures([shard_paths(path, k)["features"] for k in range(n_shards)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_rows_read_equal_the_loaded_store(tmp_path, dtype):
    x, _ = _store(tmp_path / "s", dtype=dtype)
    f = _features(tmp_path / "s", 11)
    assert f.shape == (103, 8) and f.dtype == dtype and len(f) == 103
    assert torch.equal(f[:], FeatureStore(tmp_path / "s").features())
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 103, 500)  # repeats, any order, across shard borders
    assert torch.equal(f[idx], x[idx])
    assert torch.equal(f[torch.as_tensor(idx)], x[idx])
    assert torch.equal(f[[-1, 0, -103]], x[[102, 0, 0]])
    assert torch.equal(f[5:37], x[5:37]) and f[200:300].shape == (0, 8)
    with pytest.raises(IndexError):
        f[[103]]


def test_subsets_compose_and_survive_pickling(tmp_path):
    x, _ = _store(tmp_path / "s")
    f = _features(tmp_path / "s", 11)
    a = np.arange(3, 100, 2)
    sub = f.subset(a)
    b = np.array([0, 5, 47, 5, 1])
    assert torch.equal(sub.subset(b)[:], x[a][b])
    worker = pickle.loads(pickle.dumps(sub))  # what a spawned DataLoader worker gets
    assert torch.equal(worker[[0, 10, 48]], x[a][[0, 10, 48]])


def test_views_share_one_descriptor_per_shard(tmp_path):
    from hiergeo.data import rows

    x, _ = _store(tmp_path / "s")
    f = _features(tmp_path / "s", 11)
    train, val = f.subset(np.arange(0, 103, 2)), f.subset(np.arange(1, 103, 2))
    train[:], val[:], f[:]
    mine = set(rows._FILES) & set(f.keys)
    assert len(mine) == 11  # one per shard file, not one per shard and view
    open_fds = len(os.listdir("/proc/self/fd"))
    f.subset(np.arange(5))[:], train[:], val[:]  # new views, same files: nothing opened
    assert len(os.listdir("/proc/self/fd")) == open_fds
    # a store rewritten at the same path: a view made now reads the new files
    y, _ = _store(tmp_path / "s", seed=1)
    assert torch.equal(_features(tmp_path / "s", 11)[:], y) and not torch.equal(y, x)


def test_a_truncated_shard_is_named(tmp_path):
    _store(tmp_path / "s")
    f = _features(tmp_path / "s", 11)
    p = shard_paths(tmp_path / "s", 10)["features"]
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(OSError, match="shard-00010.*truncated"):
        f[[102]]


@pytest.mark.parametrize("batch", [7, 1000])
def test_index_rows_in_any_order(tmp_path, monkeypatch, batch):
    _, table = _store(tmp_path / "s")
    monkeypatch.setattr(train_data, "INDEX_BATCH", batch)
    rows = np.array([100, 3, 3, 57, 0, 99])
    got = train_data.read_index_rows(tmp_path / "s", rows)
    assert got["id"].tolist() == table["id"].iloc[rows].tolist()
    assert len(train_data.read_index_rows(tmp_path / "s", None)) == 103


@pytest.mark.parametrize("batch", [7, 1000])
def test_store_split_is_lazy_and_labelled_in_batches(tmp_path, monkeypatch, cache_env, batch):
    """Labels looked up a batch of the index at a time equal one lookup of the whole table;
    the split keeps no table and no features, and max_samples cuts across batches."""
    import gazetteer

    x, table = _store(tmp_path / "s")
    monkeypatch.setattr(train_data, "INDEX_BATCH", batch)
    gz = gazetteer.load()
    cfg = load_config("smoke")
    split, rep, dim = train_data.read_store_split(tmp_path / "s", cfg, gz, "train")
    want, want_rep = train_data._labels(gz, table, cfg.data.label_mode, "all", check=False)
    assert torch.equal(split.ids, want) and dim == 8 and rep["rows"] == 103
    assert {k: rep[k] for k in ("country", "city")} == {k: want_rep[k]
                                                         for k in ("country", "city")}
    assert split.table_ is None and isinstance(split.x, StoreFeatures)
    assert split.inputs([4, 2]).dtype == torch.float16
    assert torch.equal(split.inputs([4, 2]), x[[4, 2]])
    assert split.table["id"].tolist() == table["id"].tolist()  # read when asked for
    cut, _, _ = train_data.read_store_split(tmp_path / "s", cfg, gz, "train", max_samples=20)
    assert len(cut) == 20 and len(cut.x) == 20 and cut.table["id"].iloc[-1] == "s19"
    sub = train_data._subset(cut, np.array([19, 0]))
    assert sub.table["id"].tolist() == ["s19", "s0"] and torch.equal(sub.inputs([0]), x[[19]])


def test_a_shard_with_every_image_skipped_is_read(tmp_path, cache_env):
    """Shards of 3, 0 and 2 rows: the empty one has a file but no index row."""
    import json

    import gazetteer
    from hiergeo.data.store import FORMAT, finalize, write_shard

    x, table = _store(tmp_path / "ref", n=5, shard_size=5)
    empty = pd.DataFrame({"id": [], "path": [], "reason": []}, dtype=str)
    out = tmp_path / "s"
    for k, (a, b) in enumerate([(0, 3), (3, 3), (3, 5)]):
        write_shard(out, k, x[a:b], table.iloc[a:b].reset_index(drop=True), empty)
    finalize(out, 3)
    (out / "store.json").write_text(json.dumps({"format": FORMAT, "dim": 8}))
    split, _, _ = train_data.read_store_split(out, load_config("smoke"), gazetteer.load(), "t")
    assert len(split) == 5 and torch.equal(split.inputs(np.arange(5)), x)
    # an index that disagrees with its shards is refused, naming the shard
    write_shard(out, 1, x[:1], table.iloc[:1], empty)
    with pytest.raises(train_data.DataError, match="shard 1 holds 1 feature rows"):
        train_data.read_store_split(out, load_config("smoke"), gazetteer.load(), "t")
