"""Geolocating photos: export a run, load it offline, predict files, folders, tables, images
in memory and feature stores; refuse tampered model folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gazetteer.sources import file_sha256
from hiergeo import Geolocator, export
from hiergeo.cli.predict import main
from hiergeo.data.photos import collect_photos
from hiergeo.export import ModelFolderError
from hiergeo.model.backbones import WeightsError
from hiergeo.predict import Prediction
from hiergeo.reports.answers import prediction_table

ROOT = Path(__file__).resolve().parents[1]

# six places on five continents; each gets photos cropped from its own source picture, so
# that their backbone features differ by place
PLACES = [("astronaut", -16.50, -68.15), ("chelsea", 48.86, 2.35), ("coffee", 35.68, 139.69),
          ("rocket", -1.29, 36.82), ("immunohistochemistry", -33.87, 151.21),
          ("camera", 43.65, -79.38)]


def _dms(v: float):
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = Fraction((v - d - m / 60) * 3600).limit_denominator(10_000)
    return (Fraction(d), Fraction(m), s)


def _photo(path: Path, src: Image.Image, rng, gps=None) -> None:
    w, h = src.size
    cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((320, 240))
    exif = Image.Exif()
    if gps is not None:
        lat, lon = gps
        exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: _dms(lat),
                        3: "E" if lon >= 0 else "W", 4: _dms(lon)}
    img.save(path, quality=90, exif=exif)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """``train.csv`` (30 photos with coordinates), ``heldout/`` (6 with EXIF GPS), ``nogps/``
    (3 without), one truncated JPEG and a text file."""
    import skimage.data as d

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = []
    for name in ("train", "heldout", "nogps"):
        (root / name).mkdir()
    for k, (src_name, lat, lon) in enumerate(PLACES):
        src = Image.fromarray(getattr(d, src_name)()).convert("RGB")
        for i in range(6):
            plat, plon = lat + rng.uniform(-0.3, 0.3), lon + rng.uniform(-0.3, 0.3)
            if i < 5:
                p = root / "train" / f"{k}-{i}.jpg"
                _photo(p, src, rng)
                rows.append({"path": f"train/{p.name}", "latitude": plat, "longitude": plon})
            else:
                _photo(root / "heldout" / f"{k}.jpg", src, rng, gps=(plat, plon))
        if k < 3:
            _photo(root / "nogps" / f"{k}.jpg", src, rng)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    good = (root / "heldout" / "0.jpg").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "cut.jpg").write_bytes(good[:len(good) // 3])
    (root / "broken" / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="session")
def photo_run(photos, tmp_path_factory, cache_env):
    """Features of the training photos (the embedded backbone), a small run on them, and
    its export: ``(store, run folder, model folder)``."""
    from hiergeo.data.records import read_records
    from hiergeo.features import extract
    from hiergeo.train import load_config, run

    out = tmp_path_factory.mktemp("photo_run")
    store = out / "store"
    extract(read_records(photos / "train.csv"), store, workers=0, progress=False)
    cfg = load_config("smoke", [f"run.out={out}", "run.id=run", f"data.train={store}",
                                "data.val_fraction=0.2", "optim.epochs=20",
                                "optim.batch_size=8", "run.val_every=0"])
    run(cfg)
    model = export.write(export.from_run(out / "run"), out / "model")
    return store, out / "run", model


def test_export_holds_what_prediction_needs(photo_run):
    store, run_dir, model = photo_run
    names = export.verify(model)
    assert {"model.json", "weights.safetensors", "entities.parquet", "config.yaml"} <= set(names)
    assert "backbone.safetensors" not in names  # frozen: referenced, not copied
    meta = json.loads((model / "model.json").read_text())
    st = json.loads((store / "store.json").read_text())
    assert meta["backbone"]["name"] == st["backbone"] == "efficientnet_lite0-embedded"
    assert meta["backbone"]["data_config"] == st["data_config"]
    ent = pd.read_parquet(model / "entities.parquet")
    # only the active entities (those seen in training and their ancestors), renumbered
    assert 1 < len(ent) < 2000 and ent["id"].tolist() == list(range(len(ent)))
    assert ent.loc[0, "depth"] == 0 and (ent["parent_id"] < ent["id"]).all()
    assert meta["entities"]["n"] == len(ent)


def test_exported_model_predicts_as_the_run(photo_run):
    """Bit-identical to the run's own descent (with its memory) on the training store."""
    from hiergeo.data.splits import read_store_split
    from hiergeo.evaluate import build_memory, load_run
    from hiergeo.predict import predict

    store, run_dir, model = photo_run
    cfg, m, hier, gz = load_run(run_dir)
    split, _, _ = read_store_split(store, cfg, gz, "test")
    from hiergeo.data.splits import load_data

    mem = build_memory(cfg, load_data(cfg, gz).train) if m.uses_memory else None
    want = predict(m, split.all_inputs(), hier, cfg.loss.tau, memory=mem, beams=cfg.eval.beams,
                   topk=5, coords=cfg.eval.coords, threshold=cfg.eval.threshold)
    keys = gz.entities["key"].to_numpy(object)
    for g in (Geolocator.load(model), Geolocator.load(run_dir)):
        got = g.predict([store], progress=False)
        assert np.array_equal(got["pred_latitude"].to_numpy(), want.lat)
        assert got["city_key"].tolist() == [keys[i] if i >= 0 else None
                                            for i in want.paths[:, 0, 3]]
        np.testing.assert_array_equal(got["p_country"].to_numpy(), want.path_prob[:, 0, 0])
        assert "error_km" in got.columns and got["error_km"].notna().all()


def test_offline_load_with_an_empty_cache(photo_run, photos, tmp_path):
    """A fresh process with no network (sockets refused), an empty cache and no home loads
    the model and predicts photos; it builds no gazetteer and writes nothing to the cache."""
    _, _, model = photo_run
    cache = tmp_path / "cache"
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network disabled by the test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import sys, json\n"
        "from hiergeo import Geolocator\n"
        "g = Geolocator.load(sys.argv[1])\n"
        "t = g.predict([sys.argv[2]], progress=False, workers=0)\n"
        "print(json.dumps({'n': len(t), 'countries': t['country_key'].tolist(),\n"
        "                  'p': t['p_country'].tolist()}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HIERGEO", "TORCH"))}
    env.update(HIERGEO_CACHE=str(cache), HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
               XDG_CACHE_HOME=str(tmp_path / "xdg"), TORCH_HOME=str(tmp_path / "torch"),
               HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, str(model), str(photos / "nogps")],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 3 and all(c for c in out["countries"]) and all(
        0 < p <= 1 for p in out["p"])
    assert not cache.exists() or not any(cache.rglob("*"))


@pytest.mark.parametrize("name, damage", [
    ("weights.safetensors", "flip"), ("entities.parquet", "truncate"),
    ("model.json", "flip"), ("weights.safetensors", "delete")])
def test_tampered_model_folders_are_refused(photo_run, tmp_path, name, damage):
    _, _, model = photo_run
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    p = bad / name
    data = p.read_bytes()
    if damage == "flip":
        i = len(data) // 2
        p.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    elif damage == "truncate":
        p.write_bytes(data[:len(data) - 10])
    else:
        p.unlink()
    with pytest.raises(ModelFolderError, match=name):
        Geolocator.load(bad)
    (bad / "SHA256SUMS").unlink()
    with pytest.raises(ModelFolderError, match="no SHA256SUMS"):
        Geolocator.load(bad)


def test_cli_writes_csv_parquet_geojson_with_truth_and_skips(photo_run, photos, tmp_path,
                                                            capsys):
    _, _, model = photo_run
    table = tmp_path / "more.csv"
    pd.DataFrame({"path": [str(photos / "nogps" / "0.jpg")], "latitude": [-16.5],
                  "longitude": [-68.15], "credit": ["someone, CC BY-SA"]}).to_csv(
        table, index=False)
    outs = [tmp_path / "p.csv", tmp_path / "p.parquet", tmp_path / "p.geojson"]
    args = ["--model", str(model), str(photos / "heldout"), str(photos / "broken" / "cut.jpg"),
            str(table), "--topk", "3", "--workers", "0", "--no-progress", "--json"]
    for o in outs:
        args += ["--out", str(o)]
    assert main(args) == 0
    csv = pd.read_csv(outs[0], keep_default_na=False)
    par = pd.read_parquet(outs[1])
    gj = json.loads(outs[2].read_text())
    assert len(csv) == len(par) == len(gj["features"]) == 7  # 6 EXIF photos + the table's
    assert {"path_1", "path_3", "p_3", "answer", "confident_level", "error_km",
            "hit_country", "true_city_key", "credit"} <= set(par.columns)
    assert "path_4" not in par.columns
    assert par["error_km"].notna().all() and par["true_country_key"].notna().all()
    row = par[par["credit"] == "someone, CC BY-SA"].iloc[0]
    assert row["true_country_key"] == "BO" and row["true_latitude"] == -16.5
    f0 = gj["features"][0]
    assert f0["geometry"]["coordinates"] == [round(par.loc[0, "pred_longitude"], 6),
                                             round(par.loc[0, "pred_latitude"], 6)]
    skipped = pd.read_csv(tmp_path / "p.skipped.csv")
    assert skipped["path"].str.endswith("cut.jpg").all() and len(skipped) == 1
    assert "truncated" in skipped.loc[0, "reason"]
    per = pd.read_csv(tmp_path / "p.per_country.csv", keep_default_na=False)
    assert per["n"].sum() == 7
    report = json.loads(capsys.readouterr().out)
    assert report["photos"] == 7 and report["skipped"] == 1 and report["truth"]["n"] == 7
    assert set(report["stage_share"]) == {"listing", "decode", "backbone", "descent", "table"}
    assert main(["--model", str(model), str(photos / "nogps"), "--out",
                 str(tmp_path / "x.txt")]) == 2


def test_images_in_memory_match_their_files(photo_run, photos):
    _, _, model = photo_run
    g = Geolocator.load(model)
    files = sorted((photos / "nogps").glob("*.jpg"))
    from_files = g.predict(files, progress=False, workers=0)
    with Image.open(files[1]) as im:
        pil = im.copy()
    from_memory = g.predict([pil], progress=False, workers=0)
    assert from_memory["path"].isna().all() and from_memory["id"].tolist() == ["image-0"]
    cols = ["pred_latitude", "pred_longitude", "city_key", "p_country", "p_city"]
    pd.testing.assert_frame_equal(from_memory[cols], from_files[cols].iloc[[1]].reset_index(
        drop=True))
    f = g.backbone.features(torch.stack([g.backbone.transform()(pil)]))
    pd.testing.assert_frame_equal(g.predict_features(f)[cols], from_memory[cols])


def test_backbone_weights_not_on_disk_are_named(photo_run):
    _, _, model = photo_run
    p = export.read(model)
    p.meta["backbone"] = {**p.meta["backbone"], "name": "resnet18",
                          "weights": "/nowhere/resnet18-finetuned.safetensors"}
    g = Geolocator(p)
    with pytest.raises(WeightsError, match="/nowhere/resnet18-finetuned.safetensors"):
        g.predict([ROOT / "nothing.jpg"], progress=False)
    p.meta["backbone"] = None  # features of unknown origin (the synthetic demo's)
    g = Geolocator(p)
    with pytest.raises(ModelFolderError, match="predict_features"):
        g.predict([ROOT / "nothing.jpg"], progress=False)
    assert len(g.predict_features(torch.zeros(2, p.meta["model"]["in_dim"]))) == 2
    with pytest.raises(ValueError, match=r"features must be \[n, 1280\]"):
        g.predict_features(torch.zeros(2, 7))


def test_fine_tuned_backbone_travels_with_the_model(photos, tmp_path, cache_env):
    """A run with encoder=timm and the backbone trained: the export packs it, and the
    exported model answers as the run does on the same photos."""
    from hiergeo.evaluate import load_run
    from hiergeo.predict import predict
    from hiergeo.train import load_config, run

    cfg = load_config("smoke", [f"run.out={tmp_path}", "run.id=ft", "model.encoder=timm",
                                f"data.images={photos / 'train.csv'}",
                                "model.freeze_backbone=false", "optim.max_steps=2",
                                "optim.batch_size=8", "run.val_every=0",
                                "data.val_fraction=0.2", "hardware.workers=0"])
    run(cfg)
    model = export.write(export.from_run(tmp_path / "ft"), tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    assert meta["backbone"]["included"] and (model / "backbone.safetensors").exists()
    g = Geolocator.load(model)
    files = sorted((photos / "heldout").glob("*.jpg"))
    got = g.predict(files, progress=False, workers=0, score=False)
    cfg, m, hier, gz = load_run(tmp_path / "ft")
    x = torch.stack([m.encoder.backbone.transform()(Image.open(f).convert("RGB"))
                     for f in files])
    want = predict(m, x, hier, cfg.loss.tau, beams=cfg.eval.beams, topk=5,
                   coords=cfg.eval.coords, threshold=cfg.eval.threshold)
    np.testing.assert_allclose(got["pred_latitude"].to_numpy(), want.lat)
    np.testing.assert_allclose(got["p_country"].to_numpy(), want.path_prob[:, 0, 0],
                               rtol=1e-5)
    # the trained backbone differs from the embedded weights it started from
    from hiergeo.model.backbones import create_backbone

    start = create_backbone().model.state_dict()
    moved = g.backbone.model.state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in start)


# -- the table and the inputs, by hand ---------------------------------------------------------
def _entities():
    # root, a country, its placeholder region, a region, a subregion, two cities
    rows = [(0, "<root>", "root", 0, "World", -1), (1, "BO", "country", 1, "Bolivia", 0),
            (2, "La Paz_BO", "region", 2, "La Paz", 1),
            (3, "Murillo_La Paz_BO", "subregion", 3, "Murillo", 2),
            (4, "El Alto_Murillo_La Paz_BO", "city", 4, "El Alto", 3),
            (5, "La Paz_Murillo_La Paz_BO", "city", 4, "La Paz", 3),
            (6, "_BO", "region", 2, "", 1)]
    return pd.DataFrame(rows, columns=["id", "key", "level", "depth", "name", "parent_id"])


def test_prediction_table_reads_like_a_person_writes():
    paths = np.array([[[1, 2, 3, 4], [1, 2, 3, 5]],
                      [[1, 6, -1, -1], [-1, -1, -1, -1]],
                      [[1, 2, 3, 5], [1, 2, 3, 4]]])
    level_prob = np.array([[[0.9, 0.8, 1.0, 0.7], [0.9, 0.8, 1.0, 0.3]],
                           [[0.4, 1.0, 0, 0], [0, 0, 0, 0]],
                           [[0.95, 0.6, 1.0, 0.9], [0.95, 0.6, 1.0, 0.1]]])
    pred = Prediction(paths=paths, score=np.log(level_prob.clip(1e-300)).sum(-1),
                      level_prob=level_prob, lat=np.array([-16.5, -17.0, -16.6]),
                      lon=np.array([-68.2, -65.0, -68.1]),
                      confident_level=np.array([1, -1, 3]), comparisons=np.zeros(3, int))
    t = prediction_table(pred, _entities(), ["a", "b", "c"], topk=3)
    assert t["answer"].tolist() == ["Bolivia › La Paz, subregion unsure",
                                    "country unsure (best guess Bolivia, 40%)",
                                    "Bolivia › La Paz › Murillo › La Paz"]
    assert t["confident_level"].tolist() == ["region", "", "city"]
    np.testing.assert_allclose(t.loc[0, ["p_country", "p_region", "p_subregion", "p_city"]]
                               .astype(float), [0.9, 0.72, 0.72, 0.504])
    assert t.loc[1, "region_key"] == "_BO" and t.loc[1, "path_1"] == "Bolivia"  # no name
    assert np.isnan(t.loc[1, "p_city"]) and pd.isna(t.loc[1, "city_key"])
    assert t.loc[0, "path_2"] == "Bolivia › La Paz › Murillo › La Paz"
    assert t.loc[0, "key_2"] == "La Paz_Murillo_La Paz_BO"
    assert t.loc[0, "p_2"] == pytest.approx(0.9 * 0.8 * 0.3)
    assert pd.isna(t.loc[1, "path_2"]) and np.isnan(t.loc[1, "p_2"])
    assert t["path_3"].isna().all()  # asked for 3, the prediction holds 2


def test_collect_photos_reads_every_kind(photos, tmp_path):
    table = tmp_path / "t.parquet"
    pd.DataFrame({"id": ["x"], "path": ["../" + photos.name + "/nogps/0.jpg"]}).to_parquet(
        table)
    shutil.copy(photos / "nogps" / "0.jpg", tmp_path / "0.jpg")
    table2 = tmp_path / "t2.csv"
    pd.DataFrame({"path": ["0.jpg"], "latitude": ["91"], "longitude": ["0"]}).to_csv(
        table2, index=False)
    got = collect_photos([photos / "heldout", table, table2, photos / "heldout" / "1.jpg"])
    assert len(got) == 6 + 2  # the file named again is predicted once
    exif = got[got["truth_source"] == "exif"]
    assert len(exif) == 6 and exif["latitude"].notna().all()
    assert got.loc[got["id"] == "x", "truth_source"].item() == ""
    assert Path(got.loc[got["id"] == "x", "path"].item()).resolve() == (
        photos / "nogps" / "0.jpg").resolve()
    bad = got[got["path"] == str(tmp_path / "0.jpg")]
    assert len(bad) == 1 and bad["latitude"].isna().all()  # latitude 91 is no truth
    with pytest.raises(ValueError, match="feature store"):
        store = tmp_path / "s"
        store.mkdir()
        (store / "store.json").write_text("{}")
        collect_photos([store])


def test_memory_is_written_a_block_at_a_time_as_the_memory_keeps_it(tmp_path):
    """The streamed memory.safetensors holds exactly the rows Memory builds (unit float16),
    whatever the block size, and reads back with safetensors."""
    from safetensors.torch import load_file

    from hiergeo.export import _write_memory
    from hiergeo.predict.memory import Memory

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=g).half() * 3
    ids = torch.randint(-1, 50, (100, 4), generator=g)
    want = Memory(x, ids)
    for chunk in (7, 100, 1000):
        _write_memory(tmp_path / "m.safetensors", {"features": x, "ids": ids}, chunk=chunk)
        got = load_file(str(tmp_path / "m.safetensors"))
        assert torch.equal(got["features"], want.features)
        assert torch.equal(got["ids"].long(), ids) and got["ids"].dtype == torch.int32
    _write_memory(tmp_path / "u.safetensors", {"features": want.features, "ids": ids,
                                               "unit": True})
    again = load_file(str(tmp_path / "u.safetensors"))
    assert torch.equal(again["features"], want.features)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _write_memory(tmp_path / "n.safetensors", {"features": bad, "ids": ids})


def test_a_killed_prediction_resumes_where_it_stopped(photo_run, photos, tmp_path,
                                                     monkeypatch, capsys):
    """Parts saved as they are done: after a crash the same command predicts only what is
    left, and the outputs equal those of a run never interrupted; other photos start over."""
    _, _, model = photo_run
    args = ["--model", str(model), str(photos / "heldout"), str(photos / "broken"),
            "--part-size", "3", "--workers", "0", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "whole.csv")]) == 0
    assert not (tmp_path / "whole.csv.parts").exists()

    calls, crash = [], [2]  # crash at the call numbered crash[0] (once)
    real = Geolocator.predict_part

    def crashing(self, records, **kw):
        calls.append(records["id"].tolist())
        if len(calls) == crash[0]:
            crash[0] = 0
            raise RuntimeError("killed")
        return real(self, records, **kw)

    monkeypatch.setattr(Geolocator, "predict_part", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        main(args + ["--out", str(tmp_path / "again.csv")])
    assert len(list((tmp_path / "again.csv.parts").glob("part-*.skipped.parquet"))) == 1
    calls.clear()
    assert main(args + ["--out", str(tmp_path / "again.csv")]) == 0
    assert len(calls) == 2  # 8 photos in parts of 3: the first part was not predicted again
    whole, again = (pd.read_csv(tmp_path / f, keep_default_na=False)
                    for f in ("whole.csv", "again.csv"))
    pd.testing.assert_frame_equal(whole, again)
    assert (tmp_path / "again.skipped.csv").exists() and len(whole) == 6

    # the same output with other photos: the parts of the earlier photos are not reused
    calls.clear()
    crash[0] = 2
    with pytest.raises(RuntimeError, match="killed"):
        main(args + ["--out", str(tmp_path / "third.csv")])
    calls.clear()
    other = ["--model", str(model), str(photos / "nogps"), "--part-size", "3", "--workers", "0",
             "--no-progress", "--out", str(tmp_path / "third.csv")]
    assert main(other) == 2 and not calls  # refused: the parts are another prediction's
    assert "other photos" in capsys.readouterr().err
    assert len(list((tmp_path / "third.csv.parts").glob("part-*.parquet"))) == 2  # kept
    assert main([*other, "--restart"]) == 0
    assert len(calls) == 1 and len(pd.read_csv(tmp_path / "third.csv")) == 3
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(model), str(tmp_path / "empty"), "--out",
                 str(tmp_path / "e.csv")]) == 2  # no photos: an error, not an empty table
    # a photo named on the command line that does not exist: refused before the model loads
    # (issue 27; it used to be predicted as a skipped row, exit 1)
    assert main(["--model", str(model), str(tmp_path / "typo.jpg"), "--out",
                 str(tmp_path / "t.csv"), "--workers", "0"]) == 2
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "t.skipped.csv").exists()


def _with_memory(run_dir: Path, to: Path) -> Path:
    """A copy of a run whose model mixes in its retrieval memory (weights 0.6 per level)."""
    from hiergeo.model import checkpoint

    shutil.copytree(run_dir, to)
    ck = checkpoint.load(to / checkpoint.NAME)
    ck["model"]["memory_weight"] = torch.full((4,), 0.6, dtype=torch.float64)
    checkpoint.save(to / checkpoint.NAME, ck)
    return to


def test_the_memory_travels_and_predicts_as_the_run(photo_run, tmp_path):
    """A model whose memory weights are on: the streamed memory.safetensors, loaded back,
    gives the run's own descent with its memory, bit for bit; memory=False the model
    alone."""
    from hiergeo.data.splits import load_data, read_store_split
    from hiergeo.evaluate import build_memory, load_run
    from hiergeo.predict import predict

    store, run_dir, _ = photo_run
    run2 = _with_memory(run_dir, tmp_path / "run")
    model = export.write(export.from_run(run2), tmp_path / "model")
    assert (model / "memory.safetensors").exists()
    cfg, m, hier, gz = load_run(run2)
    assert m.uses_memory
    split, _, _ = read_store_split(store, cfg, gz, "test")
    kw = {"beams": cfg.eval.beams, "topk": 5, "coords": cfg.eval.coords,
          "threshold": cfg.eval.threshold}
    mem = build_memory(cfg, load_data(cfg, gz).train)
    want = predict(m, split.all_inputs(), hier, cfg.loss.tau, memory=mem, **kw)
    alone = predict(m, split.all_inputs(), hier, cfg.loss.tau, **kw)
    assert not np.array_equal(want.level_prob, alone.level_prob)  # the memory matters here
    got = Geolocator.load(model).predict([store], progress=False, score=False)
    np.testing.assert_array_equal(got["p_city"].to_numpy(), want.path_prob[:, 0, 3])
    g = Geolocator.load(model, memory=False)
    assert g.memory is None
    no_mem = g.predict([store], progress=False, score=False)
    m.memory_weight.zero_()
    alone = predict(m, split.all_inputs(), hier, cfg.loss.tau, **kw)
    np.testing.assert_array_equal(no_mem["p_city"].to_numpy(), alone.path_prob[:, 0, 3])


def test_a_model_is_pinned_by_its_digest_and_its_backbone_file(photo_run, tmp_path):
    _, _, model = photo_run
    digest = export.sums_digest(model)
    Geolocator.load(model, expect_sha256=digest)
    with pytest.raises(ModelFolderError, match="not the model you pinned"):
        Geolocator.load(model, expect_sha256="0" * 64)
    for f in model.iterdir():  # shared models: readable by others where the umask allows
        assert f.stat().st_mode & 0o044 == 0o044 & ~_umask()
    p = export.read(model)
    wfile = tmp_path / "w.safetensors"
    wfile.write_bytes(b"not these weights")
    p.meta["backbone"] = {**p.meta["backbone"], "weights": str(wfile),
                          "weights_sha256": "1" * 64, "weights_bytes": 123}
    with pytest.raises(WeightsError, match="not the weights the model's features"):
        _ = Geolocator(p).backbone
    p.meta["backbone"] = {**p.meta["backbone"], "name": "hf-hub:someone/model"}
    with pytest.raises(WeightsError, match="allow-download"):
        _ = Geolocator(p).backbone


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_an_entity_table_that_is_not_a_tree_is_refused(photo_run, tmp_path):
    """Even with its checksum rewritten to match, a table whose parents point forward (or
    whose memory ids point outside it) is refused."""
    _, _, model = photo_run
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    e = pd.read_parquet(bad / "entities.parquet")
    e.loc[1, "parent_id"] = len(e) - 1
    e.to_parquet(bad / "entities.parquet", index=False)
    sums = [line.split("  ") for line in (bad / "SHA256SUMS").read_text().splitlines()]
    (bad / "SHA256SUMS").write_text("".join(
        f"{file_sha256(bad / n) if n == 'entities.parquet' else d}  {n}\n" for d, n in sums))
    with pytest.raises(ModelFolderError, match="not a tree"):
        Geolocator.load(bad)


def test_export_names_a_training_store_that_moved(photo_run, tmp_path):
    store, run_dir, _ = photo_run
    moved = tmp_path / "moved"
    shutil.copytree(store, moved)
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    cfg = (run2 / "config.yaml").read_text().replace(str(store), str(tmp_path / "gone"))
    (run2 / "config.yaml").write_text(cfg)
    from hiergeo.cli.export import main as export_main

    assert export_main(["--run", str(run2), "--out", str(tmp_path / "m")]) == 2
    with pytest.raises(FileNotFoundError, match="--store PATH"):
        export.from_run(run2)
    p = export.from_run(run2, store=moved)
    assert p.meta["backbone"]["name"] == "efficientnet_lite0-embedded"
    assert export.from_run(run2, store=moved, features_only=True).meta["backbone"] is None


def test_two_predictions_never_share_an_output(photo_run, photos, tmp_path, hold_lock,
                                               capsys):
    """A second prediction into the same --out stops at once, in one line naming the first
    (before: it died with a traceback when the first removed the parts it was reading)."""
    _, _, model = photo_run
    out = tmp_path / "p.csv"
    holder = hold_lock(tmp_path / ".p.csv.lock")  # a prediction running into p.csv
    args = ["--model", str(model), str(photos / "heldout"), "--workers", "0",
            "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "in use by another process" in err, err
    assert not out.exists() and not Path(f"{out}.parts").exists()
    holder.kill()
    holder.wait()
    assert main(args) == 0 and out.exists()


def test_resume_starts_over_with_another_model(photo_run, photos, tmp_path, monkeypatch):
    _, run_dir, model = photo_run
    calls, crash = [], [True]
    real = Geolocator.predict_part

    def crash_second(self, records, **kw):
        calls.append(len(records))
        if len(calls) == 2 and crash[0]:
            crash[0] = False
            raise RuntimeError("killed")
        return real(self, records, **kw)

    monkeypatch.setattr(Geolocator, "predict_part", crash_second)
    out = tmp_path / "p.csv"
    base = [str(photos / "heldout"), "--part-size", "3", "--workers", "0", "--no-progress",
            "--out", str(out)]
    with pytest.raises(RuntimeError):
        main(["--model", str(model), *base])
    other = export.from_run(run_dir)
    other.weights["head.net.0.weight"] = other.weights["head.net.0.weight"] * 1.5
    other_dir = export.write(other, tmp_path / "other")
    calls.clear()
    assert main(["--model", str(other_dir), *base]) == 2 and not calls  # another model's
    assert main(["--model", str(other_dir), *base, "--restart"]) == 0
    assert len(calls) == 2  # both parts predicted again: the saved part was another model's
    # a backbone that cannot load fails before the saved parts are looked at
    crash[0] = True
    calls.clear()
    with pytest.raises(RuntimeError):
        main(["--model", str(model), *base])
    assert main(["--model", str(model), *base, "--backbone-weights",
                 str(tmp_path / "typo.safetensors")]) == 2
    assert (tmp_path / "p.csv.parts").exists()


def test_collect_photos_odd_tables_and_folders(photos, tmp_path):
    from gazetteer import InputError

    zero = tmp_path / "zero.jpg"
    _photo(zero, Image.new("RGB", (64, 48), (9, 9, 9)), np.random.default_rng(1), gps=(0, 0))
    t = tmp_path / "t.parquet"
    pd.DataFrame({"id": [None, "b", None], "path": [str(zero), None, str(photos / "nogps" /
                                                                         "1.jpg")]}).to_parquet(t)
    got = collect_photos([t])
    assert got["id"].tolist() == [str(zero), "b", str(photos / "nogps" / "1.jpg")]
    assert got["latitude"].isna().all()  # EXIF (0, 0) is no position
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "in").symlink_to(photos / "nogps")
    assert len(collect_photos([tmp_path / "folder"])) == 3
    clash = tmp_path / "c.csv"
    pd.DataFrame({"id": ["1", "1"], "path": [str(zero), str(photos / "nogps" / "0.jpg")]}
                 ).to_csv(clash, index=False)
    with pytest.raises(InputError, match="share ids"):
        collect_photos([clash])
    from hiergeo.data.photos import PhotoRows

    rows = PhotoRows(got["path"].tolist(), lambda im: torch.zeros(1),
                     np.zeros(len(got), bool), got["reason"].tolist())
    assert rows[1][2] == "no path given for this row" and rows[0][2] is None
    # two rows without a path or an id are two rows, each skipped with its reason
    t2 = tmp_path / "t2.csv"
    pd.DataFrame({"path": ["", ""], "latitude": [1, 2]}).to_csv(t2, index=False)
    two = collect_photos([t2])
    assert two["id"].tolist() == [f"{t2}:row 2", f"{t2}:row 3"]
    assert two["reason"].notna().all()
    # a table naming a file found in a folder too keeps the table's row (its id and truth),
    # whatever the order
    t3 = tmp_path / "t3.csv"
    pd.DataFrame({"id": ["x"], "path": [str(photos / "nogps" / "0.jpg")], "latitude": [5],
                  "longitude": [6]}).to_csv(t3, index=False)
    for order in ([t3, photos / "nogps"], [photos / "nogps", t3]):
        both = collect_photos(order)
        assert len(both) == 3 and both.loc[both["id"] == "x", "latitude"].item() == 5
    # Parquet ids stored as floats (a blank among numbers) read as integers
    t4 = tmp_path / "t4.parquet"
    pd.DataFrame({"id": [1.0, None], "path": [str(zero), str(photos / "nogps" / "2.jpg")]}
                 ).to_parquet(t4)
    assert collect_photos([t4])["id"].tolist() == ["1", str(photos / "nogps" / "2.jpg")]


def test_photos_descend_in_query_blocks(photo_run, photos, tmp_path, monkeypatch):
    """The memory is searched once per block of queries (not per batch of photos), and the
    answers do not depend on the block size."""
    import hiergeo.geolocate as geolocate
    from hiergeo.predict.memory import Memory

    _, run_dir, _ = photo_run
    run2 = _with_memory(run_dir, tmp_path / "run")
    g = Geolocator(export.from_run(run2))
    searches = []
    real = Memory.search
    monkeypatch.setattr(Memory, "search", lambda self, f: searches.append(len(f)) or
                        real(self, f))
    files = sorted((photos / "heldout").glob("*.jpg"))
    big = g.predict(files, batch_size=2, workers=0, progress=False, score=False)
    assert searches == [6]  # three batches of 2 photos, one search
    searches.clear()
    monkeypatch.setattr(geolocate, "QUERY_BLOCK", 4)
    small = g.predict(files, batch_size=2, workers=0, progress=False, score=False)
    assert searches == [4, 2]
    pd.testing.assert_frame_equal(big, small)


def test_backbone_weights_are_pinned_at_extraction(photos, tmp_path):
    """A store extracted with a local weights file records its sha256, the export carries it,
    and a weights file that is gone at export time is an error, not an unpinned model."""
    from safetensors.torch import save_file

    from hiergeo.data.records import read_records
    from hiergeo.export import _weights_ref
    from hiergeo.features import extract
    from hiergeo.model.backbones import EMBEDDED, create_backbone

    wfile = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone().model.state_dict().items()},
              str(wfile))
    records = read_records(photos / "train.csv").head(2)
    extract(records, tmp_path / "store", backbone=create_backbone(EMBEDDED, weights=wfile),
            workers=0, progress=False)
    st = json.loads((tmp_path / "store" / "store.json").read_text())
    digest = file_sha256(wfile)
    assert st["weights_sha256"] == digest and st["weights_path"] == str(wfile.resolve())
    assert _weights_ref("elsewhere.pth", st)["weights_sha256"] == digest
    assert _weights_ref(str(wfile))["weights_sha256"] == digest
    with pytest.raises(FileNotFoundError, match="cannot pin"):
        _weights_ref(str(tmp_path / "gone.pth"))


def test_loading_options_and_refusals(photo_run, tmp_path):
    _, _, model = photo_run
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    p = bad / "weights.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:-8] + bytes(b ^ 1 for b in data[-8:]))  # the last entity's bits
    Geolocator.load(bad, check=False)  # not checked: loads
    with pytest.raises(ModelFolderError, match="weights.safetensors"):
        Geolocator.load(bad, check=False, expect_sha256=export.sums_digest(bad))
    shutil.rmtree(bad)
    shutil.copytree(model, bad)
    (bad / "calibration.json").unlink()
    (bad / "calibration.json").symlink_to(model / "calibration.json")
    with pytest.raises(ModelFolderError, match="symbolic link"):
        Geolocator.load(bad)


def test_scoring_failure_keeps_the_answers(photo_run, photos, tmp_path, monkeypatch, caplog):
    import hiergeo.geolocate as geolocate

    _, _, model = photo_run

    def broken(*a, **k):
        raise KeyError("no gazetteer today")

    monkeypatch.setattr(geolocate, "score_truth", broken)
    out = tmp_path / "p.csv"
    assert main(["--model", str(model), str(photos / "heldout"), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0
    t = pd.read_csv(out)
    assert len(t) == 6 and "error_km" not in t.columns
    assert "scoring them failed (KeyError" in caplog.text


def test_file_names_that_are_not_utf8_are_skipped_not_fatal(photo_run, photos, tmp_path):
    _, _, model = photo_run
    folder = tmp_path / "odd"
    folder.mkdir()
    good = (photos / "nogps" / "0.jpg").read_bytes()
    (folder / "fine.jpg").write_bytes(good)
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(odd, "wb") as fh:
        fh.write(good)
    out = tmp_path / "p.csv"
    assert main(["--model", str(model), str(folder), os.fsdecode(odd), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["fine"]
    skipped = pd.read_csv(tmp_path / "p.skipped.csv")
    assert len(skipped) == 1 and skipped["reason"].str.contains("not valid UTF-8").all()  # once
    assert skipped["id"].str.endswith("caf\\xe9.jpg").all()  # the name's bytes, readable


def test_cli_predicts_an_osv5m_labels_table(photo_run, photos, tmp_path, capsys):
    """hiergeo.predict reads OSV-5M's layout (id column, {id}.jpg in --image-dir) and scores
    against its coordinates."""
    _, _, model = photo_run
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["0", "1"], "latitude": [1.0, 2.0], "longitude": [3.0, 4.0]}).to_csv(
        labels, index=False)
    out = tmp_path / "p.csv"
    assert main(["--model", str(model), str(labels), "--image-dir", str(photos / "heldout"),
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    t = pd.read_csv(out, keep_default_na=False)
    assert t["id"].astype(str).tolist() == ["0", "1"]
    assert t["path"].tolist() == [str(photos / "heldout" / "0.jpg"),
                                  str(photos / "heldout" / "1.jpg")]
    assert t["true_latitude"].tolist() == [1.0, 2.0]  # the table's truth, not EXIF's
    assert "against the 2 known positions" in capsys.readouterr().out
