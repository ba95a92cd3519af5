"""The fast image path agrees with the plain one: the tensor resize with timm's PIL transform,
reduced JPEG decoding's features with the full decode's, the GPU path's (run here on the CPU)
with the CPU path's, and every bad input gets the same verdict on each path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_images import make_images
from torch.utils.data import DataLoader

from hiergeo.data.gpu_jpeg import GpuJpegDecoder, JpegRows, collate_jpeg, orient
from hiergeo.data.images import ImageRows, collate_images, load_image
from hiergeo.model.backbones import Preprocess, create_backbone, resize_short_side

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "images"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/images not present")


def _shared_photos() -> list[str]:
    return sorted(str(p) for d in ("osv5m_playset", "osv5m", "exif_gps", "bad_inputs")
                  for p in (SHARED / d).iterdir() if p.suffix.lower() != ".csv")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone()


def _transform(backbone, size: int, draft: bool) -> Preprocess:
    """The embedded backbone's eval transform at input ``size``."""
    import timm.data

    t = timm.data.create_transform(**{**backbone.data_config, "input_size": (3, size, size)},
                                   is_training=False)
    return Preprocess(t, resize_short_side(t) if draft else None)


def _outcomes(backbone, paths, dataset, collate, decoder=None) -> dict:
    """row -> features (float32) or the skip reason."""
    out = {}
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=32, collate_fn=collate):
            x, rows, bad = decoder(batch) if decoder else batch
            if x is not None:
                out.update(zip(rows.tolist(), backbone.features(x), strict=True))
            out.update(bad)
    return out


def _compare(a: dict, b: dict) -> tuple[np.ndarray, list]:
    """Cosines where both gave features; rows whose verdicts differ."""
    cos, differ = [], []
    for r in a:
        if isinstance(a[r], str) or isinstance(b[r], str):
            if a[r] != b[r]:
                differ.append((r, a[r], b[r]))
            continue
        cos.append(torch.nn.functional.cosine_similarity(a[r], b[r], dim=0).item())
    return np.array(cos), differ


@needs_shared
def test_tensor_resize_matches_timm(backbone):
    """The Preprocess fast path (uint8 tensor resize) gives timm's PIL transform's pixels
    within two grey levels, and fewer than 1% of them differ at all (measured on every
    shared photo: 2 levels at most, 0.34% of the values on average, 0.76% at most)."""
    t = backbone.transform()
    assert t.steps is not None
    std = torch.tensor(t.steps[4]).view(3, 1, 1)
    for p in _shared_photos()[::3]:
        img = load_image(p).image
        if img is not None:
            levels = ((t(img) - t.transform(img)) * std * 255).abs()
            assert levels.max() <= 2 + 1e-3 and (levels > 0.5).float().mean() < 0.01, p


@needs_shared
@pytest.mark.parametrize(("size", "min_cos", "min_reduced"), [(112, 0.99, 6), (64, 0.98, 150)])
def test_reduced_decode_features_agree(backbone, size, min_cos, min_reduced):
    """At input sizes small enough that the shared photos are decoded reduced (the 640 x
    360-480 playset photos at 64 px, the 512-px OSV-5M ones at 112), each photo's features
    keep a cosine >= min_cos to the full decode's (measured: 0.995 and 0.989 at worst,
    medians 1.0 and 0.999), and every verdict is the same."""
    paths = np.array(_shared_photos(), dtype=object)
    fast, plain = _transform(backbone, size, True), _transform(backbone, size, False)
    reduced = sum(1 for p in paths if (a := load_image(p, fast.min_side)).ok
                  and a.image.size != load_image(p).image.size)
    assert reduced >= min_reduced
    cos, differ = _compare(_outcomes(backbone, paths, ImageRows(paths, plain), collate_images),
                           _outcomes(backbone, paths, ImageRows(paths, fast), collate_images))
    assert not differ
    assert cos.min() >= min_cos and np.median(cos) >= 0.995, (cos.min(), np.median(cos))


def _verdict(res) -> str:
    return "ok" if res.ok else res.reason


@needs_shared
def test_bad_inputs_same_verdict_at_every_size(tmp_path):
    """Every file of ../shared/images/bad_inputs, and every kind of file the loader handles,
    gets the same verdict (and the same upright shape) decoded reduced or in full."""
    files = sorted((SHARED / "bad_inputs").iterdir()) + list(make_images(tmp_path).values())
    for p in files:
        full = load_image(p)
        for min_side in (8, 64, 224):
            res = load_image(p, min_side)
            assert _verdict(res) == _verdict(full), (p, min_side)
            assert res.note == full.note, p
            if full.ok:
                w, h = full.image.size
                assert (res.image.width >= res.image.height) == (w >= h), p
                assert min(res.image.size) >= min(min(w, h), 2 * min_side), p
    assert load_image(SHARED / "bad_inputs" / "landscape_6.jpg", 64).image.size == (300, 225)
    assert load_image(SHARED / "bad_inputs" / "portrait_8.jpg", 64).image.size == (225, 300)
    assert "truncated" in load_image(SHARED / "bad_inputs" / "corrupted.jpg", 64).reason


@needs_shared
def test_gpu_path_agrees_run_on_the_cpu(backbone, tmp_path):
    """The nvJPEG path's logic (bytes read in workers, batched decode, EXIF orientation,
    resize and normalise as tensors, CPU fallback) run with torchvision's CPU decoder: the
    same features as the CPU path and the same verdict for every bad input."""
    kinds = make_images(tmp_path)
    photos = [p for p in _shared_photos() if "playset" not in p] + _shared_photos()[:40:4]
    paths = np.array(photos + [str(p) for p in kinds.values()], dtype=object)
    t = _transform(backbone, 112, False)  # nvJPEG decodes at full size
    decoder = GpuJpegDecoder(t, torch.device("cpu"), paths)
    cpu = _outcomes(backbone, paths, ImageRows(paths, t), collate_images)
    gpu = _outcomes(backbone, paths, JpegRows(paths, t), collate_jpeg, decoder)
    cos, differ = _compare(cpu, gpu)
    assert not differ
    assert cos.min() >= 0.999
    items = [JpegRows(paths, t)[i] for i in range(len(paths))]
    sent = {Path(paths[it[1]]).name for it in items if it[3] is not None}
    assert {"landscape_6.jpg", "portrait_8.jpg", "rgb.jpg", "exif_gps_rotated.jpg"} <= sent
    assert not sent & {"cmyk.jpg", "truncated.jpg", "notes.jpg", "grey.png", "IMG_5195.HEIC",
                       "missing.jpg"}
    # corrupted.jpg ends with its end-of-image marker but its scan is cut: it decodes with
    # a grey bottom band, and the CPU path gives its verdict
    assert "corrupted.jpg" in sent and decoder.fallbacks >= 1
    assert "truncated" in gpu[int(np.flatnonzero([p.endswith("corrupted.jpg")
                                                  for p in paths])[0])]


def test_orient_matches_pil():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 5, 3), dtype=np.uint8)
    for o in range(1, 9):
        img = Image.fromarray(a)
        exif = img.getexif()
        exif[0x0112] = o
        img.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(img))
        got = orient(torch.from_numpy(a).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        assert np.array_equal(want, got), o


def test_reduced_decode_factor(tmp_path):
    """A 2000 x 1500 JPEG for a resize to 224: decoded at 1/2 (750 >= 2 x 224; 1/4 would
    give 375), upright when its EXIF says 6; a PNG is never reduced."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((2000, 1500), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "big.jpg", quality=90, exif=exif.tobytes())
    img.save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.jpg", 224).image.size == (750, 1000)
    assert load_image(tmp_path / "big.jpg", 100).image.size == (375, 500)
    assert load_image(tmp_path / "big.jpg").image.size == (1500, 2000)
    assert load_image(tmp_path / "big.png", 100).image.size == (2000, 1500)
