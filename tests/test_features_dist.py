"""Several processes on one feature store: concurrent writers, and extraction split by rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

from hiergeo.cli.features import main
from hiergeo.data.store import FeatureStore, shard_done, shard_paths, write_shard
from hiergeo.devices import Ranks, ranks_from_env, resolve_device
from hiergeo.devices import torch_threads as _threads

ROOT = Path(__file__).resolve().parents[1]
SHARD = 4  # 14 rows -> shards of 4, 4, 4, 2: rank 0 of 2 takes 0 and 2, rank 1 takes 1 and 3


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                        "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ---- concurrent writers -------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np, pandas as pd, torch
    from hiergeo.data.store import write_store

    out, me, times = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)  # both writers write the same store
    x = torch.from_numpy(rng.standard_normal((30, 8)).astype("f4")).to(torch.float16)
    table = pd.DataFrame({"id": [f"p{i}" for i in range(30)], "latitude": rng.uniform(-80, 80, 30),
                          "longitude": rng.uniform(-180, 180, 30)})
    (out.parent / f"ready-{me}").touch()
    while len(list(out.parent.glob("ready-*"))) < 2:  # start together
        time.sleep(0.005)
    for _ in range(times):
        write_store(out, x, table, shard_size=7, backbone="test")
""")


def test_two_processes_write_one_store_at_once(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(i), "30"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    store = FeatureStore(out)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((30, 8)).astype("f4")).to(torch.float16)
    assert torch.equal(store.features(), x)
    assert store.index["id"].tolist() == [f"p{i}" for i in range(30)]
    assert store.meta["rows"] == 30 and json.loads((out / "report.json").read_text())["shards"] == 5
    assert _tmp_files(out) == []


def test_a_failed_shard_write_leaves_no_file(tmp_path):
    index = pd.DataFrame({"id": ["a"], "latitude": [1.0], "longitude": [2.0]})
    unwritable = pd.DataFrame({"id": [object()]})  # parquet cannot store a bare object
    with pytest.raises(pa.ArrowException):
        write_shard(tmp_path, 0, torch.zeros(1, 4), index, unwritable)
    assert not shard_done(tmp_path, 0)
    assert [p.name for p in (tmp_path / "shards").iterdir()] == []


# ---- extraction split by rank --------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """14 rows: 12 small JPEGs with coordinates, one without, one missing file."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(13):
        pix = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pix).save(folder / f"p{i:02d}.jpg", quality=90)
        rows.append((f"p{i:02d}.jpg", rng.uniform(-60, 60), rng.uniform(-170, 170)))
    rows[5] = (rows[5][0], float("nan"), 10.0)  # no latitude: skipped with its reason
    rows.insert(9, ("gone.jpg", 1.0, 2.0))  # missing file
    table = folder / "photos.csv"
    pd.DataFrame(rows, columns=["path", "latitude", "longitude"]).to_csv(table, index=False)
    return table


def _args(table: Path, out: Path) -> list[str]:
    return ["--data", str(table), "--out", str(out), "--shard-size", str(SHARD),
            "--batch-size", "4", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def single(photos, tmp_path_factory) -> Path:
    """The store one process writes (run in this process, through the command line)."""
    out = tmp_path_factory.mktemp("single") / "store"
    assert main(_args(photos, out)) == 0
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = FeatureStore(a), FeatureStore(b)
    pd.testing.assert_frame_equal(sa.index, sb.index)
    # equal up to float16 rounding: thread counts differ between the runs
    torch.testing.assert_close(sa.features(torch.float32), sb.features(torch.float32),
                               rtol=2e-3, atol=2e-3)
    pd.testing.assert_frame_equal(pd.read_csv(a / "skipped.csv"), pd.read_csv(b / "skipped.csv"))
    assert json.loads((a / "report.json").read_text()) == json.loads(
        (b / "report.json").read_text())


@pytest.fixture
def as_rank(monkeypatch, capsys):
    """Run ``main`` in this process as rank r of 2 (env as torchrun sets it); its report."""
    threads = torch.get_num_threads()

    def run(rank: int, args: list[str]) -> dict:
        for k, v in {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank,
                     "LOCAL_WORLD_SIZE": 2}.items():
            monkeypatch.setenv(k, str(v))
        capsys.readouterr()
        assert main([*args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    yield run
    torch.set_num_threads(threads)  # main gives a rank its share of the CPUs


def test_the_single_process_store(single):
    report = json.loads((single / "report.json").read_text())
    assert report == {"images_read": 12, "skipped": 2, "shards": 4, "skipped_by_reason": {
        "coordinates missing or invalid": 1, "missing file": 1}}
    assert len(FeatureStore(single)) == 12


def test_ranks_split_the_shards_and_the_last_one_finalizes(photos, single, tmp_path, as_rank):
    out = tmp_path / "store"
    # rank 1 alone: its shards only, then it exits naming the ones left to rank 0
    r1 = as_rank(1, _args(photos, out))
    assert r1 == {"finalized": False, "shards_written": [1, 3], "shards_remaining": [0, 2]}
    assert [shard_done(out, k) for k in range(4)] == [False, True, False, True]
    assert not (out / "index.parquet").exists()
    # rank 0 completes the set and writes the index
    r0 = as_rank(0, _args(photos, out))
    assert r0["finalized"] and r0["shards_written"] == [0, 2]
    _assert_same_store(out, single)


def test_torchrun_two_processes_match_one(photos, single, tmp_path, as_rank):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hiergeo.features", *_args(photos, out)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # each rank wrote exactly its own shards (k % 2 == rank)
    for rank, mine in ((0, "0, 2"), (1, "1, 3")):
        assert re.search(rf"rank {rank} of 2: shards {mine} written", res.stderr), \
            res.stderr[-3000:]
    _assert_same_store(out, single)
    assert _tmp_files(out) == []

    # a rerun, as either rank, extracts nothing and (re)writes the same index
    stamps = {k: shard_paths(out, k)["features"].stat().st_mtime_ns for k in range(4)}
    for rank in (1, 0):
        again = as_rank(rank, _args(photos, out))
        assert again["finalized"] and again["shards_written"] == []
    assert {k: shard_paths(out, k)["features"].stat().st_mtime_ns for k in range(4)} == stamps
    _assert_same_store(out, single)


def test_rows_changed_between_runs_are_refused(photos, single, tmp_path, capsys):
    """Same count, two rows swapped: a rank (or rerun) reading other rows must not add its
    shards to the store."""
    table = pd.read_csv(photos)
    table["path"] = [str(photos.parent / p) for p in table["path"]]
    table.iloc[[0, 1]] = table.iloc[[1, 0]].to_numpy()
    other = tmp_path / "swapped.csv"
    table.to_csv(other, index=False)
    assert main(_args(other, single)) == 2
    assert "ids_sha256" in capsys.readouterr().err


def test_ranks_that_read_different_tables_are_caught(photos, tmp_path, as_rank, monkeypatch,
                                                     capsys):
    """Ranks that start together each write store.json, so its digest cannot see that one
    read another table (here rows of shards 0 and 1 swapped); the rank that finalizes checks
    every shard's ids and refuses to write the index."""
    table = pd.read_csv(photos)
    table["path"] = [str(photos.parent / p) for p in table["path"]]
    table.iloc[[0, SHARD]] = table.iloc[[SHARD, 0]].to_numpy()
    other = tmp_path / "swapped.csv"
    table.to_csv(other, index=False)
    out = tmp_path / "store"
    as_rank(1, _args(photos, out))
    (out / "store.json").unlink()  # as if rank 0 had started at the same moment
    for k, v in {"RANK": 0, "WORLD_SIZE": 2, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 2}.items():
        monkeypatch.setenv(k, str(v))
    assert main(_args(other, out)) == 2
    assert "shard 1 holds other rows" in capsys.readouterr().err
    assert not (out / "index.parquet").exists()


def test_ranks_and_devices_from_the_environment(monkeypatch):
    assert ranks_from_env({}) == Ranks()
    assert ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                           "LOCAL_WORLD_SIZE": "2"}) == Ranks(3, 4, 1, 2)
    assert ranks_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).local_world == 2
    with pytest.raises(ValueError, match="RANK=2 with WORLD_SIZE=2"):
        ranks_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not an integer"):
        ranks_from_env({"WORLD_SIZE": "two"})
    two = Ranks(1, 2, 1, 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert _threads(None, Ranks()) is None  # one process: torch's own choice
    assert _threads(None, two) >= 1
    assert _threads(3, two) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads(None, two) is None  # the user's OMP_NUM_THREADS stands
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert _threads(None, two) >= 1  # ... unless it is torchrun's default
    if not torch.cuda.is_available():
        assert resolve_device("auto", 1) == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda", 1)
