"""Opening real-world photos without surprises.

:func:`load_image` returns an RGB image or a reason it could not: missing file, not an image,
truncated or corrupt data, HEIC without ``pillow-heif``. It applies the EXIF orientation
(tolerating malformed EXIF), converts CMYK, greyscale, palette and alpha images to RGB
(transparency composited on white) and centre-crops an image wider or taller than
:data:`MAX_ASPECT`:1 (so no resize aims at billions of pixels). A decompression bomb (more than
``PIL.Image.MAX_IMAGE_PIXELS``) is refused. It never raises for a bad file: callers count and
report.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .zips import ZipMember

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


class Unreadable(ValueError):
    """A file that decodes but holds no photo hiergeo can read; the message is the reason."""


def _float_to_l(img: Image.Image) -> Image.Image:
    """A floating-point image (mode F, e.g. a scientific TIFF) as 8-bit grey: values in
    [0, 1] scaled to 0..255, values in [0, 255] kept; anything else is refused (converting
    it as PIL does would clip a [0, 1] image to black and predict it)."""
    import numpy as np

    a = np.asarray(img, dtype=np.float32)
    if not np.isfinite(a).all():  # getextrema() skips NaN unless the first pixel is one
        raise Unreadable("floating-point pixels that are not numbers (NaN or inf): not a "
                         "photo")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255:
        raise Unreadable(f"floating-point pixels from {lo:g} to {hi:g} (not 0..1 or 0..255): "
                         "not a photo")
    scale = 255.0 if hi <= 1.0 else 1.0
    return img.point(lambda v: v * scale).convert("L")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        img = _float_to_l(img)
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
        # exif_transpose copies an image that needs no turn (as long as decoding a 1024 x
        # 768 photo): ask it only for orientations 2-8
        turn = img.getexif().get(0x0112, 1) in range(2, 9)
        upright = ImageOps.exif_transpose(img) if turn else img
    except Exception as exc:  # malformed EXIF: keep the pixels as stored
        upright = img
        note = f"EXIF unreadable, orientation not applied ({exc})"
    rgb = _to_rgb(upright if upright is not None else img)
    rgb.load()
    return rgb, note


#: The longest side an image keeps, as a multiple of its short side: a wider (or taller)
#: image is centre-cropped to this before any transform. The eval transforms resize the
#: short side and keep a centred square, so a crop to 4:1 leaves what the backbone sees as it
#: was (a 360-degree panorama is 2:1); a 200000 x 1 PNG (274 bytes) would otherwise be
#: resized to 51M x 256 pixels, tens of GB (issue 26).
MAX_ASPECT = 4


def _limit_aspect(img: Image.Image) -> tuple[Image.Image, str | None]:
    """``img`` centre-cropped to at most :data:`MAX_ASPECT`:1, with a note when it was."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if long <= MAX_ASPECT * short:
        return img, None
    keep = MAX_ASPECT * short
    if w > h:
        left = (w - keep) // 2
        box = (left, 0, left + keep, h)
    else:
        top = (h - keep) // 2
        box = (0, top, w, top + keep)
    # the note names no pixel counts: a reduced decode of the same file gets the same note
    way = "wider" if w > h else "taller"
    return img.crop(box), f"{way} than {MAX_ASPECT}:1, centre-cropped to {MAX_ASPECT}:1"


def _notes(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


def _bomb(exc: Exception) -> str:
    return f"too large, refused as a decompression bomb ({exc})"


#: Rows at the bottom of a full-size decode that :func:`_grey_filled` inspects.
GREY_ROWS = 16
#: A reduced JPEG decode keeps at least this many times the short side the resize makes.
#: The DCT-domain reduction is sharper than the antialiased bicubic resize it replaces: with
#: the resize left to shrink by 2 or more after it, the embedded backbone's features of the
#: shared photos kept a cosine of 0.99 or more to the full decode's (median 0.998); decoding
#: right down to the resize's size gave 0.92 to 0.99, about what bilinear for bicubic does.
DRAFT_HEADROOM = 2


def _draft(img: Image.Image, min_side: int | None) -> int:
    """Ask libjpeg to decode a JPEG at 1/2, 1/4 or 1/8 of its size (scaling in the DCT
    domain: the decode itself gets faster, and the resize after it has fewer pixels to read),
    the largest reduction that keeps the short side >= :data:`DRAFT_HEADROOM` x
    ``min_side``, so the transform's resize still shrinks by 2 or more. The short side is the
    same before and after the EXIF orientation is applied, so the test holds for the upright
    image. Returns the factor taken (1: none)."""
    if not min_side or img.format != "JPEG":
        return 1
    short = min(img.size)
    for factor in (8, 4, 2):
        if short // factor >= DRAFT_HEADROOM * min_side:
            width = img.width
            img.draft(img.mode, (img.width // factor, img.height // factor))
            return max(1, round(width / img.width))
    return 1


def _source(path) -> tuple[object, str, str | None]:
    """What ``Image.open`` reads for ``path`` (a file path, or the bytes of a
    :class:`~hiergeo.data.zips.ZipMember`), its lower-case suffix, and why it cannot be
    read (None: it can be tried)."""
    if isinstance(path, ZipMember):
        if path.suffix in HEIC_SUFFIXES and not heif_available():
            return None, path.suffix, "HEIC/HEIF image: install pillow-heif to decode it"
        data, reason = path.read()
        return (None if data is None else io.BytesIO(data)), path.suffix, reason
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        return None, suffix, "missing file" if not path.exists() else "not a file"
    if suffix in HEIC_SUFFIXES and not heif_available():
        return None, suffix, "HEIC/HEIF image: install pillow-heif to decode it"
    return path, suffix, None


def load_image(path: str | Path | Image.Image | ZipMember,
               min_side: int | None = None) -> LoadResult:
    """Open ``path`` as an upright RGB image, or say why not. An image already in memory
    (a PIL image) is turned upright and converted the same way; a photo inside a zip
    (:class:`~hiergeo.data.zips.ZipMember`) is read from its bytes and decoded as a file.

    ``min_side``: the short side the caller's resize makes (``Preprocess.min_side``). A JPEG
    file whose short side is at least 4 times that is decoded at 1/2, 1/4 or 1/8 of its size
    (:func:`_draft`), never below twice it: a 12-megapixel photo (4000 x 3000) decoded at 1/4
    for the embedded backbone took 60-80 ms to decode and preprocess instead of 310-340 on a
    busy 2-core machine, and features agree with the full decode's (tests/test_decode.py).
    None: full size. The verdict on a bad file is the same either way."""
    if isinstance(path, Image.Image):
        try:
            path.load()
            rgb, note = _upright(path)
        except Unreadable as exc:
            return LoadResult(None, str(exc))
        except (OSError, SyntaxError, ValueError) as exc:
            return LoadResult(None, f"corrupt image data ({exc})")
        if rgb.width < 1 or rgb.height < 1:
            return LoadResult(None, "empty image")
        rgb, cropped = _limit_aspect(rgb)
        return LoadResult(rgb, None, _notes(note, cropped))
    src, suffix, reason = _source(path)
    if reason is not None:
        return LoadResult(None, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey
            try:
                with Image.open(src) as img:
                    factor = _draft(img, min_side)
                    img.load()
                    rgb, note = _upright(img)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except UnidentifiedImageError:
        if suffix in HEIC_SUFFIXES:
            return LoadResult(None, "HEIC/HEIF image that pillow-heif could not decode")
        return LoadResult(None, "not an image Pillow can read")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # the warning (made an error above) past MAX_IMAGE_PIXELS, the error past twice it
        return LoadResult(None, _bomb(exc))
    except Unreadable as exc:
        return LoadResult(None, str(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text.lower():
            return LoadResult(None, "truncated image data")
        return LoadResult(None, f"corrupt image data ({text})")
    if rgb.width < 1 or rgb.height < 1:
        return LoadResult(None, "empty image")
    if _grey_filled(rgb, rows=max(2, GREY_ROWS // factor)):
        return LoadResult(None, "truncated image data (JPEG stream cut short; missing rows "
                                "rendered grey)")
    rgb, cropped = _limit_aspect(rgb)
    return LoadResult(rgb, None, _notes(note, cropped))


def probe_image(path: str | Path) -> str | None:
    """Why ``path`` is not an image, judged from its header alone (no pixels decoded:
    about 100 times faster than :func:`load_image`), or None when it looks readable. A
    file that passes can still fail to decode (truncated data): readers of many images
    check them here up front and skip the rare decoding failure later."""
    if isinstance(path, ZipMember) and path.suffix not in HEIC_SUFFIXES:
        # the member's first bytes only, not the whole photo read, inflated and CRC-checked
        # (damage past them is found when it is loaded, and skipped there with its reason);
        # a header that does not fit in them: the whole member, as for a file
        head, reason = path.read_head()
        if reason is not None:
            return reason
        verdict = _probe(io.BytesIO(head))
        if verdict is None or len(head) >= path.size:
            return verdict
    src, _, reason = _source(path)
    if reason is not None:
        return reason
    return _probe(src)


def _probe(src) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                if img.width < 1 or img.height < 1:
                    return "empty image"
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return _bomb(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt image data ({exc})"
    return None


def _grey_filled(img: Image.Image, rows: int = GREY_ROWS) -> bool:
    """libjpeg renders missing scan data as (128, 128, 128) and only warns when the file still
    ends with an end-of-image marker, so Pillow reports no error. A bottom band of exactly
    that grey in every pixel is that signature (a real photo essentially never has it). A
    reduced decode (:func:`_draft`) looks at proportionally fewer rows."""
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
    keep going. Batch the items with :func:`collate_images`. A transform with a ``min_side``
    (a backbone's :class:`~hiergeo.model.backbones.Preprocess`) gets JPEGs decoded reduced
    to that short side (:func:`load_image`)."""

    def __init__(self, paths, transform, rows=None, valid=None):
        self.paths, self.transform = paths, transform
        self.rows, self.valid = rows, valid

    def __len__(self) -> int:
        return len(self.paths if self.rows is None else self.rows)

    def __getitem__(self, i):
        row = int(i if self.rows is None else self.rows[i])
        if self.valid is not None and not self.valid[row]:
            return None, row, "coordinates missing or invalid"
        res = load_image(self.paths[row], getattr(self.transform, "min_side", None))
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
