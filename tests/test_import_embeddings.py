"""``python -m hiergeo.features import``: matrices with a table, PLONK-style WebDataset tars,
resuming, bad input, and a model trained on an imported store."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hiergeo.cli.features import main as features_main
from hiergeo.data.store import FeatureStore
from hiergeo.data.wds import TarSamples, expand_braces

ROOT = Path(__file__).resolve().parents[1]


def _rows(n, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("f4")
    # France, Switzerland, Germany, Italy: every point lands in a country the gazetteer has
    t = pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)],
                      "latitude": rng.uniform(43, 49, n), "longitude": rng.uniform(2, 8, n)})
    return x, t


def _store(path):
    s = FeatureStore(path)
    return s, s.features(torch.float32).numpy()


def _run(*args):
    return features_main(["import", *map(str, args)])


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _tar(path, samples, cut=None):
    """A tar in the layout of PLONK's OSV-5M shards (plonk/data/to_webdataset/osv_to_wds.py):
    per sample ``jpg``, ``json`` (the OSV-5M row), ``street_clip.npy`` and
    ``dinov2_vitl14_registers.npy``. ``cut``: keep only that many bytes (a truncated copy)."""
    with tarfile.open(path, "w") as tf:
        for key, meta, emb in samples:
            entries = {"jpg": b"\xff\xd8not-a-photo", "json": json.dumps(meta).encode()}
            if emb is not None:
                entries["street_clip.npy"] = _npy(emb)
                entries["dinov2_vitl14_registers.npy"] = _npy(emb[:8])
            for ext, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    if cut is not None:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[:cut])
    return path


def _plonk_samples(x, t, start=0):
    return [(f"{start + j:06d}", {"id": r.id, "latitude": r.latitude, "longitude": r.longitude,
                                  "unique_country": "FR"}, x[j])
            for j, r in enumerate(t.itertuples())]


# -- (a) matrices --------------------------------------------------------------------------
def test_npy_with_csv_table_keeps_rows_ids_and_skips_bad_positions(tmp_path, capsys):
    x, t = _rows(23)
    t.loc[5, "latitude"] = np.nan
    t.loc[9, "longitude"] = 200.0
    np.save(tmp_path / "emb.npy", x)
    from hiergeo.importing import open_matrix

    assert isinstance(open_matrix(tmp_path / "emb.npy", None, None), np.memmap)
    t.rename(columns={"id": "image_id", "latitude": "lat"}).to_csv(tmp_path / "meta.csv",
                                                                    index=False)
    out = tmp_path / "store"
    assert _run("--out", out, "--matrix", tmp_path / "emb.npy", "--table", tmp_path / "meta.csv",
                "--id-column", "image_id", "--latitude", "lat", "--shard-size", 10,
                "--dtype", "float32") == 0
    said = capsys.readouterr().out
    assert "Imported 21 embeddings (imported:emb, dim 16)" in said and "2 skipped" in said
    s, got = _store(out)
    keep = [i for i in range(23) if i not in (5, 9)]
    assert s.index["id"].tolist() == t["id"].iloc[keep].tolist()
    np.testing.assert_array_equal(got, x[keep])
    np.testing.assert_allclose(s.index["latitude"], t["latitude"].iloc[keep])
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["id"].tolist() == ["img005", "img009"]
    assert "not finite" in skipped["reason"][0] and "out of range" in skipped["reason"][1]
    meta = json.loads((out / "store.json").read_text())
    assert meta["backbone"] == "imported:emb" and meta["weights"] == "imported"
    assert meta["source"]["layout"] == "matrix" and meta["rows"] == 21
    assert [f["bytes"] for f in meta["inputs"]] == [(tmp_path / "emb.npy").stat().st_size,
                                                   (tmp_path / "meta.csv").stat().st_size]
    assert s.index["shard"].tolist() == [0] * 8 + [1] * 10 + [2] * 3  # rows 5, 9 in shard 0


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_member_by_key(tmp_path, compressed):
    from hiergeo.importing import open_matrix

    x, t = _rows(12, seed=1)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "e.npz", street_clip=x,
                                                      other=x[:, :4])
    m = open_matrix(tmp_path / "e.npz", "street_clip", None)
    assert isinstance(m, np.memmap) != compressed  # a stored member is mapped, not read
    np.testing.assert_array_equal(m, x)
    t.to_parquet(tmp_path / "meta.parquet")
    out = tmp_path / "s"
    assert _run("--out", out, "--matrix", tmp_path / "e.npz", "--key", "street_clip",
                "--table", tmp_path / "meta.parquet", "--dtype", "float32") == 0
    s, got = _store(out)
    np.testing.assert_array_equal(got, x)
    assert s.index["id"].tolist() == t["id"].tolist() and s.meta["backbone"] == (
        "imported:street_clip")


def test_parquet_list_column_in_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, t = _rows(50, seed=2, dim=8)
    tab = pa.table({"id": t["id"], "latitude": t["latitude"], "longitude": t["longitude"],
                    "emb": pa.array(list(x), type=pa.list_(pa.float32()))})
    pq.write_table(tab, tmp_path / "m.parquet", row_group_size=7)  # shards cross groups
    out = tmp_path / "s"
    assert _run("--out", out, "--matrix", tmp_path / "m.parquet", "--embedding-column", "emb",
                "--shard-size", 12, "--dtype", "float32") == 0
    s, got = _store(out)
    np.testing.assert_array_equal(got, x)
    assert s.index["id"].tolist() == t["id"].tolist()


def test_matrix_resume_skips_finished_shards_and_gives_the_same_store(tmp_path, monkeypatch):
    import hiergeo.importing as imp

    x, t = _rows(40, seed=3)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    args = ["--matrix", tmp_path / "e.npy", "--table", tmp_path / "t.csv", "--shard-size", 10]
    assert _run("--out", tmp_path / "whole", *args) == 0

    real, calls = imp.write_shard, []

    def dies_at_shard_2(out, k, *a):
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt  # a kill while shard 2 is in flight
        real(out, k, *a)

    monkeypatch.setattr(imp, "write_shard", dies_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        _run("--out", tmp_path / "s", *args)
    assert not (tmp_path / "s" / "index.parquet").exists()
    calls.clear()
    monkeypatch.setattr(imp, "write_shard", lambda out, k, *a: calls.append(k) or real(out, k, *a))
    assert _run("--out", tmp_path / "s", *args) == 0
    assert calls == [2, 3]  # shards 0 and 1 were kept
    a, b = _store(tmp_path / "whole"), _store(tmp_path / "s")
    np.testing.assert_array_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[0].index, b[0].index)


@pytest.mark.parametrize("case,match", [
    ("rows", "24 rows, the table"),
    ("object", "not numbers"),
    ("column", "no column 'lat'"),
    ("npzkey", "no array 'nope'"),
    ("notable", "--table is needed"),
    ("dupes", "ids must be unique; repeated: ['img003']"),
    ("other", "other inputs or settings"),
])
def test_matrix_errors_are_one_line_exit_2(tmp_path, capsys, case, match):
    x, t = _rows(20)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    m, extra = tmp_path / "e.npy", []
    if case == "rows":
        np.save(tmp_path / "e.npy", np.zeros((24, 4), "f4"))
    elif case == "object":
        np.save(tmp_path / "e.npy", np.array([["a"] * 3] * 20))
    elif case == "column":
        extra = ["--latitude", "lat"]
    elif case == "npzkey":
        np.savez(tmp_path / "e.npz", emb=x)
        m, extra = tmp_path / "e.npz", ["--key", "nope"]
    elif case == "dupes":
        t.loc[7, "id"] = "img003"
        t.to_csv(tmp_path / "t.csv", index=False)
    elif case == "other":
        assert _run("--out", tmp_path / "s", "--matrix", m, "--table", tmp_path / "t.csv") == 0
        extra = ["--shard-size", "7"]
    capsys.readouterr()
    table = [] if case == "notable" else ["--table", tmp_path / "t.csv"]
    assert _run("--out", tmp_path / "s", "--matrix", m, *table, *extra) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error: " in ln]
    assert all(ln.split("\r")[-1].startswith("error: ") for ln in err), err
    assert len(err) == 1 and match in err[0], err  # one line (after the progress bar's)


# -- (b) WebDataset tars ---------------------------------------------------------------
def test_brace_ranges():
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar",
                                                  "s-011.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]


def test_webdataset_plonk_layout_truncated_tar_and_missing_position(tmp_path, capsys, caplog):
    x, t = _rows(14, seed=4)
    s1 = _plonk_samples(x[:8], t[:8])
    s1[3][1].pop("latitude")  # a sample without coordinates
    s1[0][1]["unique_region"] = None  # a missing level, as JSON writes it
    _tar(tmp_path / "shard-000000.tar", s1)
    # the second shard is cut inside its 5th sample's embedding
    _tar(tmp_path / "whole.tar", _plonk_samples(x[8:], t[8:], start=8))
    with tarfile.open(tmp_path / "whole.tar") as tf:
        m = [m for m in tf.getmembers() if m.name == "000012.street_clip.npy"][0]
    _tar(tmp_path / "shard-000001.tar", _plonk_samples(x[8:], t[8:], start=8),
         cut=m.offset_data + 40)
    out = tmp_path / "s"
    assert _run("--out", out, "--webdataset", tmp_path / "shard-{000000..000001}.tar",
                "--embedding-key", "street_clip.npy", "--shard-size", 3,
                "--dtype", "float32") == 0
    said = capsys.readouterr()
    assert "damaged: " + str(tmp_path / "shard-000001.tar") in said.out
    assert "shard-000001.tar: unreadable after byte" in caplog.text  # the warning names it
    s, got = _store(out)
    keep = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # 3: no position; 12, 13: after the damage
    assert s.index["id"].tolist() == t["id"].iloc[keep].tolist()
    np.testing.assert_array_equal(got, x[keep])
    assert (s.index["unique_country"] == "FR").all()  # PLONK's json carries OSV-5M labels
    assert s.index["unique_region"][0] == "nan"  # as OSV-5M's CSV spells a missing level
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["id"].tolist() == ["img003", "000012"]
    assert "no coordinates" in skipped["reason"][0]
    assert "damaged tar" in skipped["reason"][1]
    rep = json.loads((out / "report.json").read_text())
    assert rep["skipped"] == 2 and rep["images_read"] == 11
    meta = s.meta
    assert meta["backbone"] == "imported:street_clip" and meta["source"]["layout"] == (
        "webdataset") and len(meta["inputs"]) == 2
    # the other embedding key of the same shards
    out2 = tmp_path / "dino"
    assert _run("--out", out2, "--webdataset", tmp_path / "shard-00000[0-1].tar",
                "--embedding-key", "dinov2_vitl14_registers.npy") == 0
    assert FeatureStore(out2).dim == 8


def test_truncated_between_members_is_damage_not_a_quiet_end(tmp_path):
    x, t = _rows(4)
    _tar(tmp_path / "w.tar", _plonk_samples(x, t))
    with tarfile.open(tmp_path / "w.tar") as tf:
        m = [m for m in tf.getmembers() if m.name == "000002.jpg"][0]
    _tar(tmp_path / "c.tar", _plonk_samples(x, t), cut=m.offset + 100)  # inside a header
    r = TarSamples(tmp_path / "c.tar")
    assert [s.key for s in r] == ["000000"]
    assert "truncated" in r.damage and r.partial == "000001"
    r = TarSamples(tmp_path / "w.tar")
    assert [s.key for s in r] == ["000000", "000001", "000002", "000003"] and r.damage is None


def test_webdataset_resume_after_a_kill(tmp_path, monkeypatch):
    import hiergeo.importing as imp

    x, t = _rows(17, seed=5)
    _tar(tmp_path / "a.tar", _plonk_samples(x[:9], t[:9]))
    _tar(tmp_path / "b.tar", _plonk_samples(x[9:], t[9:], start=9))
    args = ["--webdataset", tmp_path / "a.tar", tmp_path / "b.tar", "--shard-size", 4]
    assert _run("--out", tmp_path / "whole", *args) == 0
    real, calls = imp.write_shard, []

    def dies(out, k, *a):
        calls.append(k)
        if k == 4:
            raise KeyboardInterrupt
        real(out, k, *a)

    monkeypatch.setattr(imp, "write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        _run("--out", tmp_path / "s", *args)
    reads = []
    real_iter = TarSamples.__iter__
    monkeypatch.setattr(TarSamples, "__iter__",
                        lambda self: reads.append((self.path.name, self.start))
                        or real_iter(self))
    monkeypatch.setattr(imp, "write_shard", lambda out, k, *a: calls.append(k) or real(out, k, *a))
    calls.clear()
    assert _run("--out", tmp_path / "s", *args) == 0
    # a.tar: shards 0-2 (4 + 4 + 1 samples); b.tar: 3, 4 (4 + 4); the rerun seeks into b.tar
    assert calls == [4] and reads[0][0] == "b.tar" and reads[0][1] > 0
    a, b = _store(tmp_path / "whole"), _store(tmp_path / "s")
    np.testing.assert_array_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[0].index, b[0].index)
    assert b[0].index["id"].tolist() == t["id"].tolist()
    assert _run("--out", tmp_path / "s", *args) == 0 and calls == [4]  # nothing left to do


@pytest.mark.parametrize("case,match", [
    ("key", "has no 'clip.npy' entry; its entries are dinov2_vitl14_registers.npy, jpg, "
            "json, street_clip.npy: pick the embedding with --embedding-key"),
    ("dims", "has 12 values, earlier samples 16"),
    ("strings", "not numbers"),
    ("nofile", "no file matches"),
])
def test_webdataset_errors_are_one_line_exit_2(tmp_path, capsys, case, match):
    x, t = _rows(3)
    samples = _plonk_samples(x, t)
    key = "street_clip.npy"
    if case == "key":
        key = "clip.npy"
    elif case == "dims":
        samples[2] = (samples[2][0], samples[2][1], np.zeros(12, "f4"))
    elif case == "strings":
        samples[0] = (samples[0][0], samples[0][1], np.array(["a", "b"]))
    _tar(tmp_path / "a.tar", samples)
    src = tmp_path / ("nope-*.tar" if case == "nofile" else "a.tar")
    assert _run("--out", tmp_path / "s", "--webdataset", src, "--embedding-key", key) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error: " in ln]
    assert all(ln.split("\r")[-1].startswith("error: ") for ln in err), err
    assert len(err) == 1 and match in err[0], err  # one line (after the progress bar's)


# -- downstream ------------------------------------------------------------------------
def test_train_on_an_imported_store_then_export_and_predict(tmp_path, cache_env, capsys):
    from hiergeo.geolocate import Geolocator
    from hiergeo.model.backbones import WeightsError

    x, t = _rows(120, seed=6)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    store = tmp_path / "store"
    assert _run("--out", store, "--matrix", tmp_path / "e.npy", "--table", tmp_path / "t.csv",
                "--name", "street_clip") == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "hiergeo.train", "--config", "smoke",
                        f"data.train={store}", f"run.out={tmp_path}", "run.id=imp",
                        "optim.max_steps=3", "run.val_every=0", "eval.calibrate=false"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from hiergeo.cli.export import main as export_main

    assert export_main(["--run", str(tmp_path / "imp"), "--out", str(tmp_path / "model")]) == 0
    assert "features from imported:street_clip" in capsys.readouterr().out
    for where in (tmp_path / "imp", tmp_path / "model"):  # the run, and its export
        geo = Geolocator.load(where, device="cpu")
        assert geo.meta["backbone"]["name"] == "imported:street_clip"
        table = geo.predict(store, progress=False)
        assert table["id"].tolist() == t["id"].tolist()
        with pytest.raises(WeightsError, match=r"imported embeddings \(imported:street_cl"):
            _ = geo.backbone  # what predicting on photos needs first


# -- a rerun with other settings is refused, not resumed into the old store ----------------
def _killed_after_shard_0(monkeypatch, *args):
    import hiergeo.importing as imp

    real = imp.write_shard

    def dies(out, k, *a):
        if k == 1:
            raise KeyboardInterrupt  # a kill once shard 0 is stored
        real(out, k, *a)

    monkeypatch.setattr(imp, "write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(*args)
    monkeypatch.setattr(imp, "write_shard", real)


def test_rerun_with_another_embedding_key_is_refused(tmp_path, monkeypatch, capsys):
    # the reviewer's case: StreetCLIP's shard 0 stored, then a rerun asks for DINOv2
    x, t = _rows(12, seed=8)
    _tar(tmp_path / "a.tar", _plonk_samples(x, t))
    out = tmp_path / "s"
    base = ["--out", out, "--webdataset", tmp_path / "a.tar", "--shard-size", 4, "--name", "m"]
    _killed_after_shard_0(monkeypatch, *base, "--embedding-key", "street_clip.npy")
    capsys.readouterr()
    assert _run(*base, "--embedding-key", "dinov2_vitl14_registers.npy") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--embedding-key 'street_clip.npy'" in err
    assert "another --out" in err and "Traceback" not in err
    assert not (out / "index.parquet").exists()
    # the same command as before still resumes
    assert _run(*base, "--embedding-key", "street_clip.npy", "--dtype", "float32") == 2
    assert "--dtype 'float16'" in capsys.readouterr().err
    assert _run(*base, "--embedding-key", "street_clip.npy") == 0
    np.testing.assert_allclose(_store(out)[1], x, atol=1e-2)


def test_rerun_with_another_npz_key_is_refused(tmp_path, monkeypatch, capsys):
    x, t = _rows(12, seed=9)
    np.savez(tmp_path / "e.npz", street_clip=x, dinov2=-x)
    t.to_csv(tmp_path / "t.csv", index=False)
    base = ["--out", tmp_path / "s", "--matrix", tmp_path / "e.npz", "--table",
            tmp_path / "t.csv", "--shard-size", 4, "--name", "m"]
    _killed_after_shard_0(monkeypatch, *base, "--key", "street_clip")
    capsys.readouterr()
    assert _run(*base, "--key", "dinov2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--key 'street_clip', not 'dinov2'" in err


def test_rerun_with_swapped_latitude_longitude_is_refused(tmp_path, monkeypatch, capsys):
    x, t = _rows(12, seed=10)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    base = ["--out", tmp_path / "s", "--matrix", tmp_path / "e.npy", "--table",
            tmp_path / "t.csv", "--shard-size", 4]
    _killed_after_shard_0(monkeypatch, *base)
    capsys.readouterr()
    assert _run(*base, "--latitude", "longitude", "--longitude", "latitude") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--latitude 'latitude', not 'longitude'" in err


def test_rerun_with_a_changed_input_file_is_refused(tmp_path, monkeypatch, capsys):
    x, t = _rows(12, seed=11)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    base = ["--out", tmp_path / "s", "--matrix", tmp_path / "e.npy", "--table",
            tmp_path / "t.csv", "--shard-size", 4]
    _killed_after_shard_0(monkeypatch, *base)
    np.save(tmp_path / "e.npy", x + 1)  # other embeddings, same shape and name
    capsys.readouterr()
    assert _run(*base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e.npy changed" in err


# -- the command's own checks -------------------------------------------------------------
def test_import_under_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    x, t = _rows(4)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _run("--out", tmp_path / "s", "--matrix", tmp_path / "e.npy", "--table",
                tmp_path / "t.csv") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without torchrun" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_out_that_is_no_folder_is_one_line(tmp_path, capsys, where):
    x, t = _rows(4)
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "f").write_text("not a store")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "s"
    assert _run("--out", out, "--matrix", tmp_path / "e.npy", "--table", tmp_path / "t.csv") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--out" in err


def test_csv_table_reads_only_the_columns_it_keeps(tmp_path, monkeypatch):
    import hiergeo.importing as imp

    x, t = _rows(6, seed=12)
    t["id"] = [f"00{i}" for i in range(6)]  # ids stay strings
    t["unique_country"] = "NA"  # Namibia, not a missing value
    t["caption"] = "a long text column the store does not keep"
    np.save(tmp_path / "e.npy", x)
    t.to_csv(tmp_path / "t.csv", index=False)
    seen, real = [], pd.read_csv
    monkeypatch.setattr(imp.pd, "read_csv",
                        lambda *a, **k: seen.append(list((df := real(*a, **k)).columns)) or df)
    assert _run("--out", tmp_path / "s", "--matrix", tmp_path / "e.npy", "--table",
                tmp_path / "t.csv") == 0
    assert seen == [["id", "latitude", "longitude", "unique_country"]]
    idx = _store(tmp_path / "s")[0].index
    assert idx["id"].tolist() == t["id"].tolist() and set(idx["unique_country"]) == {"NA"}


def test_parquet_matrix_decodes_each_row_once(tmp_path, monkeypatch):
    # one row group of 600 rows in shards of 50: re-reading the group from its start for
    # every shard decoded 12 x 600 rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, t = _rows(600, seed=13, dim=4)
    tab = pa.table({"id": t["id"], "latitude": t["latitude"], "longitude": t["longitude"],
                    "emb": pa.array(list(x), type=pa.list_(pa.float32()))})
    pq.write_table(tab, tmp_path / "m.parquet", row_group_size=10_000)
    decoded, real = [], pq.ParquetFile.iter_batches

    def counted(self, *a, **k):
        for batch in real(self, *a, **k):
            decoded.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    out = tmp_path / "s"
    assert _run("--out", out, "--matrix", tmp_path / "m.parquet", "--embedding-column", "emb",
                "--shard-size", 50, "--dtype", "float32") == 0
    assert sum(decoded) <= 600 + 1  # each row once, and row 0 for the width
    np.testing.assert_array_equal(_store(out)[1], x)


def test_parquet_matrix_resume_mid_row_group(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, t = _rows(90, seed=14, dim=4)
    tab = pa.table({"id": t["id"], "latitude": t["latitude"], "longitude": t["longitude"],
                    "emb": pa.array(list(x), type=pa.list_(pa.float32()))})
    pq.write_table(tab, tmp_path / "m.parquet", row_group_size=40)
    args = ["--out", tmp_path / "s", "--matrix", tmp_path / "m.parquet", "--embedding-column",
            "emb", "--shard-size", 25, "--dtype", "float32"]
    _killed_after_shard_0(monkeypatch, *args)
    assert _run(*args) == 0  # resumes at row 25, inside row group 0
    np.testing.assert_array_equal(_store(tmp_path / "s")[1], x)


class _CountingFile:
    """A file that counts the bytes read through it."""

    def __init__(self, f, counts):
        self.f, self.counts = f, counts

    def read(self, n=-1):
        b = self.f.read(n)
        self.counts.append(len(b))
        return b

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()




def test_unwanted_entries_are_seeked_over_not_read(tmp_path, monkeypatch):
    import builtins

    import hiergeo.data.wds as wds

    x, t = _rows(6, seed=15)
    path = tmp_path / "p.tar"
    with tarfile.open(path, "w") as tf:  # 200 KB photos, as in OSV-5M's shards
        for key, meta, emb in _plonk_samples(x, t):
            for ext, data in [("jpg", os.urandom(200_000)), ("json", json.dumps(meta).encode()),
                              ("street_clip.npy", _npy(emb))]:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    counts = []
    monkeypatch.setattr(wds, "open", lambda *a, **k: _CountingFile(builtins.open(*a, **k),
                                                                   counts), raising=False)
    got = list(TarSamples(path, wanted={"json", "street_clip.npy"}))
    assert [s.key for s in got] == [f"{i:06d}" for i in range(6)]
    assert got[2].entries["jpg"] is None and got[2].entries["json"] is not None
    assert sum(counts) < path.stat().st_size / 10  # the photos (1.2 MB) are not read
    # from a sample boundary, and cut inside a photo that is not read: still damage
    mid = list(TarSamples(path, got[1].end, wanted={"json"}))
    assert [s.key for s in mid] == [f"{i:06d}" for i in range(2, 6)]
    with tarfile.open(path) as tf:
        jpg = [m for m in tf.getmembers() if m.name == "000004.jpg"][0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:jpg.offset_data + 1000])
    r = TarSamples(cut, got[1].end, wanted={"json"})
    assert [s.key for s in r] == ["000002", "000003"]
    assert r.damage and r.partial == "000004"


def test_webdataset_repeated_id_is_refused_as_in_a_matrix(tmp_path, capsys):
    x, t = _rows(10, seed=16)
    t.loc[7, "id"] = t.loc[2, "id"]  # a later sample repeats an earlier shard's id
    _tar(tmp_path / "a.tar", _plonk_samples(x[:5], t[:5]))
    _tar(tmp_path / "b.tar", _plonk_samples(x[5:], t[5:], start=5))
    out = tmp_path / "s"
    args = ["--out", out, "--webdataset", tmp_path / "a.tar", tmp_path / "b.tar",
            "--shard-size", 2]
    assert _run(*args) == 2
    err = capsys.readouterr().err  # after the progress bar, one line
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert "sample '000007' repeats the id 'img002'" in err.splitlines()[-1]
    assert not (out / "index.parquet").exists()
    # a rerun resumes after the stored shards and still finds the repeat (in a stored shard)
    assert _run(*args) == 2
    assert "repeats the id 'img002'" in capsys.readouterr().err
