"""Opening real-world photos without surprises.

:func:`load_image` returns an RGB image or a reason it could not: missing file, not an image,
truncated or corrupt data, HEIC without ``pillow-heif``. It applies the EXIF orientation
(tolerating malformed EXIF), and converts CMYK, greyscale, palette and alpha images to RGB
(transparency composited on white). It never raises for a bad file: callers count and report.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

HEIC_SUFFIXES = {".heic", ".heif", ".avif"}
_heif_state: dict[str, bool] = {}


def heif_available() -> bool:
    """Register pillow-heif's opener once, if it is installed."""
    if "ok" not in _heif_state:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_state["ok"] = True
        except ImportError:
            _heif_state["ok"] = False
    return _heif_state["ok"]


@dataclass
class LoadResult:
    image: Image.Image | None
    reason: str | None = None  # why image is None
    note: str | None = None  # something fixed on the way (e.g. malformed EXIF ignored)

    @property
    def ok(self) -> bool:
        return self.image is not None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def _upright(img: Image.Image) -> tuple[Image.Image, str | None]:
    """An opened image turned upright by its EXIF orientation (malformed EXIF: as stored,
    with a note) and converted to RGB."""
    note = None
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF: keep the pixels as stored
        upright = img.copy()
        note = f"EXIF unreadable, orientation not applied ({exc})"
    rgb = _to_rgb(upright if upright is not None else img)
    rgb.load()
    return rgb, note


def load_image(path: str | Path | Image.Image) -> LoadResult:
    """Open ``path`` as an upright RGB image, or say why not. An image already in memory
    (a PIL image) is turned upright and converted the same way."""
    if isinstance(path, Image.Image):
        try:
            path.load()
            rgb, note = _upright(path)
        except (OSError, SyntaxError, ValueError) as exc:
            return LoadResult(None, f"corrupt image data ({exc})")
        if rgb.width < 1 or rgb.height < 1:
            return LoadResult(None, "empty image")
        return LoadResult(rgb, None, note)
    path = Path(path)
    if not path.exists():
        return LoadResult(None, "missing file")
    if not path.is_file():
        return LoadResult(None, "not a file")
    if path.suffix.lower() in HEIC_SUFFIXES and not heif_available():
        return LoadResult(None, "HEIC/HEIF image: install pillow-heif to decode it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey
            try:
                with Image.open(path) as img:
                    img.load()
                    rgb, note = _upright(img)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except UnidentifiedImageError:
        if path.suffix.lower() in HEIC_SUFFIXES:
            return LoadResult(None, "HEIC/HEIF image that pillow-heif could not decode")
        return LoadResult(None, "not an image Pillow can read")
    except Image.DecompressionBombWarning as exc:
        return LoadResult(None, f"too large, refused as a decompression bomb ({exc})")
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text.lower():
            return LoadResult(None, "truncated image data")
        return LoadResult(None, f"corrupt image data ({text})")
    if rgb.width < 1 or rgb.height < 1:
        return LoadResult(None, "empty image")
    if _grey_filled(rgb):
        return LoadResult(None, "truncated image data (JPEG stream cut short; missing rows "
                                "rendered grey)")
    return LoadResult(rgb, None, note)


def probe_image(path: str | Path) -> str | None:
    """Why ``path`` is not an image, judged from its header alone (no pixels decoded:
    about 100 times faster than :func:`load_image`), or None when it looks readable. A
    file that passes can still fail to decode (truncated data): readers of many images
    check them here up front and skip the rare decoding failure later."""
    path = Path(path)
    if not path.is_file():
        return "missing file" if not path.exists() else "not a file"
    if path.suffix.lower() in HEIC_SUFFIXES and not heif_available():
        return "HEIC/HEIF image: install pillow-heif to decode it"
    try:
        with Image.open(path) as img:
            if img.width < 1 or img.height < 1:
                return "empty image"
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt image data ({exc})"
    return None


def _grey_filled(img: Image.Image, rows: int = 16) -> bool:
    """libjpeg renders missing scan data as (128, 128, 128) and only warns when the file still
    ends with an end-of-image marker, so Pillow reports no error. A bottom band of exactly
    that grey in every pixel is that signature (a real photo essentially never has it)."""
    if img.height <= rows:
        return False
    band = img.crop((0, img.height - rows, img.width, img.height))
    lo, hi = zip(*band.getextrema(), strict=True)
    return min(lo) == 128 and max(hi) == 128


class ImageRows:
    """A ``torch.utils.data.Dataset`` (map-style): item ``i`` -> ``(preprocessed image or
    None, row, reason or None)`` for row ``rows[i]`` of ``paths`` (``rows`` None: row i),
    file paths or images in memory (PIL).
    A row whose ``valid`` entry is False (e.g. no coordinates), whose file does not decode or
    whose ``transform`` fails is returned with its reason, never raised: DataLoader workers
    keep going. Batch the items with :func:`collate_images`."""

    def __init__(self, paths, transform, rows=None, valid=None):
        self.paths, self.transform = paths, transform
        self.rows, self.valid = rows, valid

    def __len__(self) -> int:
        return len(self.paths if self.rows is None else self.rows)

    def __getitem__(self, i):
        row = int(i if self.rows is None else self.rows[i])
        if self.valid is not None and not self.valid[row]:
            return None, row, "coordinates missing or invalid"
        res = load_image(self.paths[row])
        if res.image is None:
            return None, row, res.reason
        try:
            return self.transform(res.image), row, None
        except Exception as exc:  # a transform failing on an odd image is a skip, not a crash
            return None, row, f"preprocessing failed ({exc})"


def collate_images(items):
    """``(images [n, C, H, W] or None, rows [n], [(row, reason), ...])`` from
    :class:`ImageRows` items: the images that loaded, stacked, and the others' reasons."""
    import torch

    good = [(x, r) for x, r, _ in items if x is not None]
    bad = [(r, why) for x, r, why in items if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, torch.tensor([g[1] for g in good], dtype=torch.long), bad
