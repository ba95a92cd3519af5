"""Hugging Face vision towers as backbones (``--backbone hf:...``), offline: tiny random
models saved with ``save_pretrained`` into temporary folders (a StreetCLIP-shaped full
CLIPModel, a DINOv2, a SigLIP vision tower), extracted, trained on, exported and predicted
with; and the errors a user meets (no folder, not in the cache, no transformers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from gazetteer.sources import file_sha256  # noqa: E402
from hiergeo.cli.features import main as features_main  # noqa: E402
from hiergeo.data.images import load_image  # noqa: E402
from hiergeo.data.store import FeatureStore  # noqa: E402
from hiergeo.model.backbones import WeightsError, create_backbone  # noqa: E402
from hiergeo.model.hf_backbones import HfBackbone  # noqa: E402

PLACES = [("astronaut", -16.50, -68.15), ("chelsea", 48.86, 2.35), ("coffee", 35.68, 139.69),
          ("rocket", -1.29, 36.82)]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)
# the processor's own settings, unlike any timm default: the store must carry these
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]


def _save_clip(folder: Path) -> Path:
    """A StreetCLIP-shaped checkpoint: a full CLIPModel (text tower too), whose vision tower
    the backbone reads; its processor resizes the short side to 40 and crops 32."""
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        vision_config=TINY, projection_dim=16,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=100, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1))
    transformers.CLIPModel(cfg).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 40},
                                    crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                                    image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _save_clip(tmp_path_factory.mktemp("streetclip-tiny"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``train.csv``: 24 photos at four places, each cropped from its own picture."""
    import skimage.data as d

    root = tmp_path_factory.mktemp("hf_photos")
    rng = np.random.default_rng(0)
    rows = []
    for k, (name, lat, lon) in enumerate(PLACES):
        src = Image.fromarray(getattr(d, name)()).convert("RGB")
        w, h = src.size
        for i in range(6):
            cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            p = root / f"{k}-{i}.jpg"
            src.crop((x0, y0, x0 + cw, y0 + ch)).resize((320, 240)).save(p, quality=90)
            rows.append({"path": p.name, "latitude": lat + rng.uniform(-0.3, 0.3),
                         "longitude": lon + rng.uniform(-0.3, 0.3)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def _direct(folder: Path, cls, backbone, paths) -> torch.Tensor:
    """transformers' own loading and forward pass on the inputs hiergeo's loader makes."""
    t = backbone.transform()
    x = torch.stack([t(load_image(p, t.min_side).image) for p in paths])
    m = cls.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return m(pixel_values=x).pooler_output


def test_clip_preprocessing_is_the_processors(clip_dir):
    """The processor's resize, crop, mean and std, on the uint8 path as on the float one."""
    b = create_backbone(f"hf:{clip_dir}")
    assert isinstance(b, HfBackbone) and b.dim == 32
    dc = b.data_config
    assert dc["resize"] == 40 and dc["input_size"] == (3, 32, 32)
    assert dc["mean"] == pytest.approx(MEAN) and dc["std"] == pytest.approx(STD)
    proc = transformers.AutoImageProcessor.from_pretrained(str(clip_dir))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 130, 3), np.uint8))
    want = proc(images=img, return_tensors="pt")["pixel_values"]
    for uint8 in (False, True):
        t = b.transform(draft=False, uint8=uint8)
        assert t.steps is not None and t.steps[0] == 40  # the fast, GPU-able path
        got = t.normalize(t(img)[None])
        # PIL's and torchvision's antialiased resizes agree to within a grey level
        assert (got - want).abs().max() <= 1.01 / 255 / min(STD)


def test_cli_extracts_a_store_with_the_hf_backbone(clip_dir, photos, tmp_path, capsys):
    out = tmp_path / "store"
    rc = features_main(["--data", str(photos / "train.csv"), "--out", str(out),
                        "--backbone", f"hf:{clip_dir}", "--workers", "0", "--dtype",
                        "float32", "--batch-size", "5"])
    assert rc == 0, capsys.readouterr().err
    st = json.loads((out / "store.json").read_text())
    wfile = clip_dir / "model.safetensors"
    assert st["backbone"] == f"hf:{clip_dir.resolve()}" and st["dim"] == 32
    assert st["weights"] == str(wfile) and st["weights_sha256"] == file_sha256(wfile)
    assert st["data_config"]["resize"] == 40 and st["data_config"]["input_size"] == [3, 32, 32]
    assert st["data_config"]["mean"] == pytest.approx(MEAN)
    store = FeatureStore(out)
    assert len(store) == 24
    paths = [photos / i for i in store.index["id"]]  # a table's ids: its (full) paths
    assert all(p.is_file() for p in paths)
    want = _direct(clip_dir, transformers.CLIPVisionModel, create_backbone(f"hf:{clip_dir}"),
                   paths)
    torch.testing.assert_close(store.features(torch.float32), want, rtol=1e-4, atol=1e-5)
    # and the features differ by photo (the test above can fail)
    assert (want[0] - want[-1]).abs().max() > 1e-3


def _trained_run(clip_dir: Path, model_dir: Path, photos: Path, tmp_path: Path,
                 epochs: int) -> Path:
    """A copy of the tiny CLIP at ``model_dir``, a store of the photos extracted with it, and
    a smoke run ``tmp_path/run`` trained on that store; returns the store."""
    import shutil

    from hiergeo.data.records import read_records
    from hiergeo.features import extract
    from hiergeo.train import load_config, run

    shutil.copytree(clip_dir, model_dir)
    store = tmp_path / "store"
    extract(read_records(photos / "train.csv"), store, workers=0, progress=False,
            backbone=create_backbone(f"hf:{model_dir}"), dtype="float32")
    run(load_config("smoke", [f"run.out={tmp_path}", "run.id=run", f"data.train={store}",
                              "data.val_fraction=0.2", f"optim.epochs={epochs}",
                              "optim.batch_size=8", "run.val_every=0"]))
    return store


def test_train_export_and_predict_photos_offline(clip_dir, photos, tmp_path, monkeypatch):
    """A store from the hf: backbone trains (the smoke preset), exports with the weights'
    digest, and the exported model rebuilds the same backbone to predict raw photos; other
    weights at the pinned path are refused."""

    from hiergeo import Geolocator, export

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "clip"
    store = _trained_run(clip_dir, model_dir, photos, tmp_path, epochs=4)
    folder = export.write(export.from_run(tmp_path / "run"), tmp_path / "model")
    bb = json.loads((folder / "model.json").read_text())["backbone"]
    st = json.loads((store / "store.json").read_text())
    assert bb["name"] == st["backbone"] == f"hf:{model_dir.resolve()}"
    assert bb["weights_sha256"] == file_sha256(model_dir / "model.safetensors")
    assert bb["data_config"] == st["data_config"] and not bb["included"]

    g = Geolocator.load(folder)
    photo = sorted(photos.glob("*.jpg"))[:3]
    table = g.predict(photo, progress=False, workers=0)
    assert len(table) == 3 and table["country_key"].notna().all()
    assert isinstance(g.backbone, HfBackbone)
    # the rebuilt backbone gives the store's features for the same photo
    ids = FeatureStore(store).index["id"].astype(str).tolist()
    row = [Path(i).name for i in ids].index("0-0.jpg")
    t = g.backbone.transform()
    with torch.no_grad():
        f = g.backbone.features(t.normalize(t(load_image(photos / "0-0.jpg",
                                                         t.min_side).image)[None]))
    torch.testing.assert_close(f[0], FeatureStore(store).features(torch.float32)[row],
                               rtol=1e-4, atol=1e-5)

    # other weights where the pinned file was: refused by digest, not used silently
    from safetensors.torch import load_file, save_file

    wfile = str(model_dir / "model.safetensors")
    save_file({k: v + 0.01 for k, v in load_file(wfile).items()}, wfile)
    with pytest.raises(WeightsError, match="not the weights"):
        Geolocator.load(folder).predict(photo[:1], progress=False, workers=0)


def _tiny(kind: str, folder: Path):
    torch.manual_seed(1)
    if kind == "dinov2":
        cfg = transformers.Dinov2Config(**TINY)
        transformers.Dinov2Model(cfg).save_pretrained(folder)
        transformers.BitImageProcessor(size={"shortest_edge": 36},
                                       crop_size={"height": 32, "width": 32}).save_pretrained(
            folder)
        return transformers.Dinov2Model
    cfg = transformers.SiglipVisionConfig(**TINY)
    transformers.SiglipVisionModel(cfg).save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return transformers.SiglipVisionModel


@pytest.mark.parametrize("kind", ["dinov2", "siglip"])
def test_other_vision_towers(kind, photos, tmp_path):
    """DINOv2 (shortest edge + crop) and SigLIP (a fixed height and width, no crop: the
    general transform path) load and give transformers' own pooled output."""
    cls = _tiny(kind, tmp_path)
    b = create_backbone(f"hf:{tmp_path}")
    assert type(b.model) is cls and b.dim == 32
    paths = sorted(photos.glob("*.jpg"))[:4]
    t = b.transform()
    x = torch.stack([t(load_image(p, t.min_side).image) for p in paths])
    with torch.no_grad():
        got = b.features(x)
    torch.testing.assert_close(got, _direct(tmp_path, cls, b, paths), rtol=1e-4, atol=1e-5)
    proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
    img = load_image(paths[0]).image
    want = proc(images=img, return_tensors="pt")["pixel_values"]
    t = b.transform(draft=False)
    assert (t.normalize(t(img)[None]) - want).abs().max() <= 1.01 / 255 / 0.5


def test_hub_name_resolves_from_the_cache_only(clip_dir, tmp_path, monkeypatch):
    """hf:org/name reads the local Hugging Face cache (laid out as huggingface_hub does)
    with no network; not in the cache: one line naming --allow-download."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache.*--allow-download"):
        create_backbone("hf:geolocal/StreetCLIP")
    repo = tmp_path / "hub" / "models--tiny--streetclip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import shutil

    shutil.copytree(clip_dir, repo / "snapshots" / commit)
    b = create_backbone("hf:tiny/streetclip")
    assert b.name == "hf:tiny/streetclip"
    assert b.weights == str(repo / "snapshots" / commit / "model.safetensors")
    # weights from another file (an export's --backbone-weights): loaded, checked for fit
    x = torch.randn(2, 3, 32, 32)
    other = create_backbone("hf:tiny/streetclip", weights=clip_dir / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(other.features(x), b.features(x))
    _tiny("dinov2", tmp_path / "dino")
    with pytest.raises(WeightsError, match="not this model's weights"):
        create_backbone("hf:tiny/streetclip", weights=tmp_path / "dino" / "model.safetensors")


def test_a_processor_of_another_size_is_refused_at_load(clip_dir, photos, tmp_path, capsys):
    """A CLIP whose processor crops 40 while the model takes 32: refused when the backbone
    is made, in one line, not at the first forward on every rank; DINOv2, which
    interpolates its position encodings, takes any crop."""
    import shutil

    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    transformers.CLIPImageProcessor(size={"shortest_edge": 48},
                                    crop_size={"height": 40, "width": 40}, image_mean=MEAN,
                                    image_std=STD).save_pretrained(bad)
    with pytest.raises(WeightsError, match="gives 40x40 images but the CLIPVisionConfig "
                                           "takes 32x32"):
        create_backbone(f"hf:{bad}")
    rc = features_main(["--data", str(photos / "train.csv"), "--out", str(tmp_path / "s"),
                        "--backbone", f"hf:{bad}", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "40x40" in err
    assert not (tmp_path / "s").exists()
    dino = tmp_path / "dino"
    _tiny("dinov2", dino)
    transformers.BitImageProcessor(size={"shortest_edge": 44},
                                   crop_size={"height": 40, "width": 40}).save_pretrained(dino)
    b = create_backbone(f"hf:{dino}")
    with torch.no_grad():
        assert b.features(torch.randn(1, 3, 40, 40)).shape == (1, 32)


@pytest.mark.parametrize("case", ["missing-folder", "not-cached", "no-transformers"])
def test_user_errors_are_one_line(case, photos, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name, want = {"missing-folder": ("hf:missing-folder", "no such folder"),
                  "not-cached": ("hf:someone/some-model", "--allow-download"),
                  "no-transformers": ("hf:someone/some-model", "pip install 'hiergeo[hf]'")
                  }[case]
    if case == "no-transformers":
        monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    rc = features_main(["--data", str(photos / "train.csv"), "--out", str(tmp_path / "s"),
                        "--backbone", name, "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and want in err, err
    assert not (tmp_path / "s").exists()


def test_an_included_hf_backbone_needs_no_source_folder(clip_dir, photos, tmp_path,
                                                       monkeypatch):
    """--include-backbone with an hf: backbone packs its config.json and
    preprocessor_config.json (checksummed like every file): with the source folder deleted
    and no hub cache, the exported model still rebuilds the backbone and predicts photos."""
    import shutil

    import huggingface_hub.constants as c

    from hiergeo import Geolocator, export
    from hiergeo.cli.export import main as export_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    src = tmp_path / "clip"
    store = _trained_run(clip_dir, src, photos, tmp_path, epochs=2)
    folder = tmp_path / "model"
    assert export_main(["--run", str(tmp_path / "run"), "--out", str(folder),
                        "--include-backbone"]) == 0
    sums = (folder / "SHA256SUMS").read_text()
    for name in ("backbone.safetensors", "backbone_config.json",
                 "backbone_preprocessor_config.json"):
        assert f"  {name}\n" in sums
    assert json.loads((folder / "backbone_preprocessor_config.json").read_text()) == \
        json.loads((src / "preprocessor_config.json").read_text())
    shutil.rmtree(src)

    g = Geolocator.load(folder)
    photo = sorted(photos.glob("*.jpg"))[:3]
    table = g.predict(photo, progress=False, workers=0)
    assert len(table) == 3 and table["country_key"].notna().all()
    assert isinstance(g.backbone, HfBackbone) and g.backbone.weights.startswith("included")
    # the rebuilt backbone is the store's: same preprocessing, same features
    ids = FeatureStore(store).index["id"].astype(str).tolist()
    row = [Path(i).name for i in ids].index("0-0.jpg")
    t = g.backbone.transform()
    with torch.no_grad():
        f = g.backbone.features(t.normalize(t(load_image(photos / "0-0.jpg",
                                                         t.min_side).image)[None]))
    torch.testing.assert_close(f[0], FeatureStore(store).features(torch.float32)[row],
                               rtol=1e-4, atol=1e-5)
    # a changed description file is caught by the checksums like any other
    p = folder / "backbone_config.json"
    p.write_text(p.read_text().replace("32", "33", 1))
    with pytest.raises(export.ModelFolderError, match="backbone_config.json"):
        Geolocator.load(folder)
    # --overwrite takes the folder as a model's; the backbone referenced, not included,
    # leaves no description files behind
    assert export_main(["--run", str(tmp_path / "run"), "--out", str(folder),
                        "--overwrite"]) == 0
    assert not (folder / "backbone_config.json").exists()
