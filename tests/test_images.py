"""Image path: loading real-world files, EXIF GPS, dataset layouts, the feature store."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, TiffImagePlugin

from hiergeo.data import load_image, read_exif_folder, read_osv5m, read_records, read_table
from hiergeo.data.exif import read_gps
from hiergeo.data.store import FeatureStore, shard_paths

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def _rational(x):
    return TiffImagePlugin.IFDRational(int(round(x * 1000)), 1000)


def make_images(folder: Path) -> dict[str, Path]:
    """One file of every kind the loader must handle; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # landscape 64 x 48
    files = {}

    img = Image.fromarray(pix)
    exif = Image.Exif()
    exif[274] = 6  # rotate 90° clockwise to display
    gps = exif.get_ifd(0x8825)
    gps.update({1: "S", 2: tuple(_rational(v) for v in (33, 51, 36)),
                3: "W", 4: tuple(_rational(v) for v in (70, 30, 0))})
    files["exif_gps_rotated"] = folder / "exif_gps_rotated.jpg"
    img.save(files["exif_gps_rotated"], exif=exif.tobytes())

    files["rgb"] = folder / "rgb.jpg"
    img.save(files["rgb"], quality=90)
    files["rgb_copy"] = folder / "rgb_copy.jpg"
    img.save(files["rgb_copy"], quality=90)
    files["cmyk"] = folder / "cmyk.jpg"
    img.convert("CMYK").save(files["cmyk"])
    files["grey"] = folder / "grey.png"
    img.convert("L").save(files["grey"])
    files["palette"] = folder / "palette.png"
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(files["palette"], transparency=0)
    files["alpha"] = folder / "alpha.png"
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.new("L", img.size, 0))  # fully transparent
    rgba.save(files["alpha"])
    files["truncated"] = folder / "truncated.jpg"
    data = files["rgb"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_image"] = folder / "notes.jpg"
    files["not_image"].write_text("this is not a JPEG")
    files["heic"] = folder / "photo.heic"
    files["heic"].write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    files["missing"] = folder / "missing.jpg"
    return files


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "img")


def test_load_image_handles_every_kind(images):
    ok = {k: load_image(p) for k, p in images.items()}
    for k in ("rgb", "cmyk", "grey", "palette", "alpha", "exif_gps_rotated"):
        assert ok[k].ok and ok[k].image.mode == "RGB", k
    assert ok["exif_gps_rotated"].image.size == (48, 64)  # orientation applied
    assert ok["rgb"].image.size == (64, 48)
    assert np.asarray(ok["alpha"].image).min() == 255  # transparency composited on white
    assert "truncated" in ok["truncated"].reason
    assert ok["not_image"].reason == "not an image Pillow can read"
    assert ok["missing"].reason == "missing file"
    assert "HEIC" in ok["heic"].reason


def test_heic_without_the_plugin_is_skipped_with_the_reason(images, monkeypatch):
    from hiergeo.data import images as images_mod

    monkeypatch.setattr(images_mod, "_heif_state", {"ok": False})
    res = load_image(images["heic"])
    assert not res.ok and "install pillow-heif" in res.reason


@pytest.mark.skipif(not (SHARED / "bad_inputs" / "IMG_5195.HEIC").exists(),
                    reason="../shared/images not present")
def test_real_heic_photo_decodes_with_the_plugin():
    pytest.importorskip("pillow_heif")
    res = load_image(SHARED / "bad_inputs" / "IMG_5195.HEIC")
    assert res.ok and res.image.mode == "RGB" and min(res.image.size) > 1000
    lat, lon = read_gps(SHARED / "bad_inputs" / "IMG_5195.HEIC")
    assert 38 < lat < 40 and -95 < lon < -93  # northern and western hemispheres


def test_exif_gps_with_hemisphere_references(images):
    lat, lon = read_gps(images["exif_gps_rotated"])
    assert lat == pytest.approx(-(33 + 51 / 60 + 36 / 3600))
    assert lon == pytest.approx(-70.5)
    assert read_gps(images["rgb"]) is None
    assert read_gps(images["not_image"]) is None


def test_dataset_layouts(images, tmp_path):
    folder = images["rgb"].parent
    ex = read_exif_folder(folder)
    assert ex.set_index("id").loc["exif_gps_rotated.jpg", "latitude"] < 0
    assert ex.set_index("id").loc["rgb.jpg", "latitude"] != ex.set_index("id").loc[
        "rgb.jpg", "latitude"]  # no GPS: NaN
    table = tmp_path / "t.csv"
    pd.DataFrame({"path": ["img/rgb.jpg", "img/grey.png"], "latitude": ["1.5", ""],
                  "longitude": ["2", "3"]}).to_csv(table, index=False)
    t = read_table(table)
    assert Path(t["path"][0]).is_absolute() and np.isnan(t["latitude"][1])
    osv = tmp_path / "osv.csv"
    pd.DataFrame({"id": ["rgb"], "latitude": [1.0], "longitude": [2.0], "country": ["NA"],
                  "region": ["Erongo"], "sub-region": [""], "city": ["Walvis Bay"]}
                 ).to_csv(osv, index=False)
    o = read_osv5m(osv, folder)
    assert o["path"][0].endswith("img/rgb.jpg") and o["country"][0] == "NA"
    assert read_records(folder)["id"].tolist() == ex["id"].tolist()
    assert read_records(table)["path"].tolist() == t["path"].tolist()


@pytest.fixture(scope="module")
def backbone():
    from hiergeo.model import create_backbone

    return create_backbone()


def test_embedded_backbone_classifies_sample_photos(backbone):
    """The package's tensors map onto timm's efficientnet_lite0: real photos land in the right
    ImageNet classes under timm's own preprocessing."""
    skimage_data = pytest.importorskip("skimage.data")
    t = backbone.transform()
    cases = {"chelsea": set(range(281, 286)), "coffee": {967, 968}}  # cats; espresso, cup
    for name, classes in cases.items():
        img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        with torch.inference_mode():
            top5 = backbone.model(t(img)[None]).topk(5).indices[0].tolist()
        assert top5[0] in classes, (name, top5)
    assert backbone.dim == 1280


def test_no_silent_download():
    from hiergeo.model import create_backbone
    from hiergeo.model.backbones import WeightsError

    with pytest.raises(WeightsError, match="--allow-download"):
        create_backbone("resnet18")
    assert create_backbone("resnet18", random_weights=True).weights == "random"


def test_feature_store_end_to_end_and_resume(images, tmp_path, backbone):
    from hiergeo.features import extract

    rows = [(k, str(p), -33.0, 151.0) for k, p in images.items()]
    rows.append(("no_coords", str(images["rgb"]), float("nan"), 151.0))
    records = pd.DataFrame(rows, columns=["id", "path", "latitude", "longitude"])
    out = tmp_path / "store"
    report = extract(records, out, backbone=backbone, batch_size=3, workers=0, shard_size=4,
                     dtype="float32", progress=False)
    good = {"rgb", "rgb_copy", "cmyk", "grey", "palette", "alpha", "exif_gps_rotated"}
    assert report["images_read"] == len(good)
    skipped = pd.read_csv(out / "skipped.csv").set_index("id")["reason"]
    assert set(skipped.index) == {"truncated", "not_image", "heic", "missing", "no_coords"}
    assert skipped["no_coords"] == "coordinates missing or invalid"
    assert "truncated" in skipped["truncated"]

    store = FeatureStore(out)
    assert set(store.index["id"]) == good and store.dim == 1280
    feats = store.features()
    # each feature sits under its own id: recompute two directly
    t = backbone.transform()
    for key in ("cmyk", "exif_gps_rotated"):
        row = int(np.flatnonzero(store.index["id"] == key)[0])
        with torch.inference_mode():
            direct = backbone.features(t(load_image(images[key]).image)[None])[0]
        assert torch.allclose(feats[row], direct, atol=1e-4), key
    r1 = int(np.flatnonzero(store.index["id"] == "rgb")[0])
    r2 = int(np.flatnonzero(store.index["id"] == "rgb_copy")[0])
    assert torch.allclose(feats[r1], feats[r2])

    # resume: a lost shard is redone, finished ones are not touched
    first = shard_paths(out, 0)["features"]
    stamp = first.stat().st_mtime_ns
    for p in shard_paths(out, 2).values():
        p.unlink()
    extract(records, out, backbone=backbone, batch_size=3, workers=0, shard_size=4,
            dtype="float32", progress=False)
    assert first.stat().st_mtime_ns == stamp
    assert torch.equal(FeatureStore(out).features(), feats)
    with pytest.raises(ValueError, match="other settings"):
        extract(records, out, backbone=backbone, shard_size=5, workers=0, progress=False)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/images not present")
def test_real_images_from_shared(tmp_path, backbone):
    from hiergeo.features import extract

    osv = read_osv5m(SHARED / "osv5m" / "labels.csv")
    exif = read_exif_folder(SHARED / "exif_gps")
    labels = pd.read_csv(SHARED / "exif_gps" / "labels.csv").set_index("file")
    got = exif.set_index("id").loc[labels.index]
    assert np.allclose(got["latitude"], labels["latitude"], atol=1e-5)
    assert np.allclose(got["longitude"], labels["longitude"], atol=1e-5)
    bad = read_records(SHARED / "bad_inputs", layout="exif")
    bad["latitude"], bad["longitude"] = 45.0, 9.0  # coordinates are not what is tested here
    records = pd.concat([osv, exif, bad], ignore_index=True)
    report = extract(records, tmp_path / "store", backbone=backbone, workers=0,
                     progress=False)
    skipped = pd.read_csv(tmp_path / "store" / "skipped.csv").set_index("id")["reason"]
    assert report["images_read"] + report["skipped"] == len(records)
    assert "truncated" in skipped["corrupted.jpg"]
    assert load_image(SHARED / "bad_inputs" / "landscape_6.jpg").image.size == (600, 450)
    assert load_image(SHARED / "bad_inputs" / "portrait_8.jpg").image.size == (450, 600)
    assert report["images_read"] >= len(osv) + len(exif)
    assert json.loads((tmp_path / "store" / "report.json").read_text())["skipped"] == len(skipped)
