"""Issue 26: inputs crafted or careless enough to take the machine down or lose data must
end in a per-file reason or a one-line refusal, never an allocation without bound."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from hiergeo.data.gpu_jpeg import jpeg_for_gpu
from hiergeo.data.images import MAX_ASPECT, ImageRows, load_image, probe_image
from hiergeo.model.backbones import Preprocess


def _timm_like() -> Preprocess:
    """The shape of timm's eval transform (resize the short side, centre crop, normalise)."""
    return Preprocess(T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                                 T.CenterCrop(224), T.ToTensor(),
                                 T.Normalize([0.5] * 3, [0.5] * 3)]), min_side=256)


def test_a_strip_of_pixels_is_cropped_before_any_resize(tmp_path):
    # 274 bytes on disk; before, the resize aimed at 51M x 256 pixels and the kernel killed
    # the process. The loader hands over at most MAX_ASPECT:1, so the transform is cheap
    strip = tmp_path / "strip.png"
    Image.new("RGB", (200_000, 1), (10, 200, 30)).save(strip)
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 50_000), 99).save(tall)
    for path, size in ((strip, (MAX_ASPECT, 1)), (tall, (1, MAX_ASPECT))):
        res = load_image(path, min_side=256)
        assert res.ok and res.image.size == size
        assert "centre-cropped to 4:1" in res.note
        x = _timm_like()(res.image)
        assert x.shape == (3, 224, 224)
    # the same for an image handed over in memory
    res = load_image(Image.new("RGB", (30_000, 7)))
    assert res.image.size == (7 * MAX_ASPECT, 7)
    # and the GPU path leaves such a JPEG to the CPU path, which crops it
    wide_jpeg = tmp_path / "wide.jpg"
    Image.new("RGB", (4000, 200), (1, 2, 3)).save(wide_jpeg)
    assert jpeg_for_gpu(wide_jpeg) is None
    square = tmp_path / "square.jpg"
    Image.new("RGB", (400, 300), (1, 2, 3)).save(square)
    assert jpeg_for_gpu(square) is not None


def test_cropping_a_panorama_leaves_what_the_backbone_sees(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (20, 130, 3), dtype=np.uint8)
    pano = Image.fromarray(small).resize((1300, 200), Image.BILINEAR)  # 6.5:1
    path = tmp_path / "pano.png"
    pano.save(path)
    res = load_image(path)
    assert res.image.size == (800, 200)
    prep = _timm_like()
    cropped, full = prep(res.image), prep(pano)
    assert (cropped - full).abs().max().item() < 2 / 255 / 0.5 + 1e-6  # 1 grey level either way
    # images within the bound are untouched
    ok = Image.fromarray(small).resize((800, 200))
    assert load_image(ok).image.size == (800, 200) and load_image(ok).note is None


@pytest.mark.parametrize("side", [40, 100])  # past MAX_IMAGE_PIXELS (a warning), past twice it
def test_a_decompression_bomb_is_a_reason_not_a_crash(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(bomb)
    res = load_image(bomb)
    assert not res.ok and "decompression bomb" in res.reason
    assert "decompression bomb" in probe_image(bomb)
    assert jpeg_for_gpu(bomb) is None
    # a batch keeps going past it
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    rows = ImageRows([str(bomb), str(good)], lambda im: torch.zeros(3, 2, 2))
    assert rows[0][0] is None and "decompression bomb" in rows[0][2]
    assert rows[1][0] is not None
