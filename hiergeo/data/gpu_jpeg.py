"""JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), batched, for
feature extraction on a GPU machine whose CPUs cannot decode as fast as the model runs.

DataLoader workers read each file's bytes and its header (:class:`JpegRows`); the main
process decodes a batch's JPEGs on the GPU in one call, turns them upright by their EXIF
orientation, and resizes, crops and normalises them there as the backbone's transform does
(:class:`GpuJpegDecoder`). Everything else takes the CPU path of
:class:`~hiergeo.data.images.ImageRows`, in the worker: a file that is not a baseline RGB or
greyscale JPEG (CMYK, PNG, HEIC, a missing or truncated file, a decompression bomb, malformed
EXIF, wider than ``MAX_ASPECT``:1), and in the main process any JPEG that nvJPEG refuses or
that decodes with a grey (truncated) bottom band, so every skipped file keeps the reason
:func:`load_image` gives.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch
from PIL import Image

from .images import GREY_ROWS, MAX_ASPECT, ImageRows, collate_images, load_image
from .zips import ZipMember

log = logging.getLogger(__name__)

#: EXIF orientation -> the tensor ops of PIL's ``exif_transpose`` on ``[C, H, W]``.
_ORIENT = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1).flip(-2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1).flip(-2),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """``x [C, H, W]`` turned upright for EXIF ``orientation`` (1-8; others: as stored), as
    PIL's ``ImageOps.exif_transpose`` turns an image."""
    op = _ORIENT.get(int(orientation))
    return x if op is None else op(x)


def jpeg_for_gpu(path) -> tuple[torch.Tensor, int] | None:
    """``(file bytes as uint8, EXIF orientation)`` when ``path`` is a file nvJPEG can take
    as it is: a JPEG (not MPO) in RGB or greyscale, ending with its end-of-image marker (a
    truncated file goes to the CPU, which names the problem), readable EXIF, not a
    decompression bomb. Else None: decode it on the CPU."""
    data = None
    if isinstance(path, ZipMember):  # a photo inside a zip: its bytes
        data, _ = path.read()
        if data is None:
            return None
        src = io.BytesIO(data)
    elif isinstance(path, str | Path):
        src = path
    else:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or min(img.size) < 1:
                    return None
                if max(img.size) > MAX_ASPECT * min(img.size):  # the CPU path crops it
                    return None
                orientation = img.getexif().get(0x0112, 1)
        if data is None:
            data = Path(path).read_bytes()
    except Exception:  # noqa: BLE001 - whatever it is, the CPU path says what
        return None
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    try:
        orientation = int(orientation)
    except (TypeError, ValueError):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation


class JpegRows(ImageRows):
    """:class:`~hiergeo.data.images.ImageRows` whose JPEGs come back undecoded: items
    ``(image or None, row, reason or None, (bytes, orientation) or None)``, the last for a
    file :func:`jpeg_for_gpu` accepts (then image and reason are None); any other row is
    decoded and preprocessed here as ImageRows does. Batch with :func:`collate_jpeg`."""

    def __getitem__(self, i):
        row = int(i if self.rows is None else self.rows[i])
        if self.valid is None or self.valid[row]:
            jpeg = jpeg_for_gpu(self.paths[row])
            if jpeg is not None:
                return None, row, None, jpeg
        return (*super().__getitem__(i), None)


def collate_jpeg(items):
    """``(images decoded on the CPU or None, their rows, [(row, reason)], [(row, bytes,
    orientation)])``."""
    x, rows, bad = collate_images([it[:3] for it in items if it[3] is None])
    return x, rows, bad, [(it[1], *it[3]) for it in items if it[3] is not None]


class GpuJpegDecoder:
    """Decodes :func:`collate_jpeg` batches on ``device`` and preprocesses them as
    ``preprocess`` (a backbone's :class:`~hiergeo.model.backbones.Preprocess`: timm's
    ``Resize(short side)``, ``CenterCrop``, to tensor, ``Normalize``) would.

    :meth:`supports` says whether the transform has that shape; ``paths`` are the loader's
    paths by row (for the CPU fallback)."""

    def __init__(self, preprocess, device: torch.device, paths):
        steps = self.steps(preprocess)
        if steps is None:
            raise ValueError(f"no GPU preprocessing for {preprocess!r}")
        self.resize, self.interpolation, self.crop, mean, std = steps
        self.device, self.paths, self.preprocess = torch.device(device), paths, preprocess
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.fallbacks = 0  # JPEGs handed to the CPU after nvJPEG refused them

    @staticmethod
    def steps(preprocess):
        """``(short side, interpolation, (crop h, crop w), mean, std)`` of the transform, or
        None when it is not timm's Resize -> CenterCrop -> to tensor -> Normalize."""
        from ..model.backbones import eval_steps

        return eval_steps(getattr(preprocess, "transform", preprocess))

    @classmethod
    def supports(cls, preprocess) -> bool:
        return cls.steps(preprocess) is not None

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """uint8 ``[3, H, W]`` on the device per file, None where nvJPEG fails."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the batch: find it
            out = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, crop h, crop w]``, as PIL's resize and crop."""
        from torchvision.transforms.v2 import functional as F

        img = F.resize(img, [self.resize], interpolation=self.interpolation, antialias=True)
        return F.center_crop(img, list(self.crop))

    def _on_cpu(self, row: int):
        """The CPU path's answer for one file: ``(tensor, None)`` or ``(None, reason)``."""
        res = load_image(self.paths[row], getattr(self.preprocess, "min_side", None))
        if res.image is None:
            return None, res.reason
        try:
            return self.preprocess(res.image), None
        except Exception as exc:  # noqa: BLE001 - as ImageRows: a skip, not a crash
            return None, f"preprocessing failed ({exc})"

    def __call__(self, batch):
        """A :func:`collate_jpeg` batch -> ``(images [n, C, h, w] float on the device or
        None, rows [n], [(row, reason)])``, the rows in the order of the images."""
        x_cpu, rows_cpu, bad, jpegs = batch
        xs, rows = [], []
        if x_cpu is not None:
            xs.append(x_cpu.to(self.device, non_blocking=True))
            rows += rows_cpu.tolist()
        if jpegs:
            decoded = self._decode([d for _, d, _ in jpegs])
            ready, cpu = [], []
            for (row, _, orientation), img in zip(jpegs, decoded, strict=True):
                if img is None or _grey_bottom(img):
                    cpu.append(row)
                    continue
                ready.append(self._prepare(orient(img, orientation)))
                rows.append(row)
            if ready:
                y = torch.stack(ready).float().div_(255)
                xs.append((y - self.mean) / self.std)
            for row in cpu:
                self.fallbacks += 1
                x, why = self._on_cpu(row)
                if x is None:
                    bad.append((row, why))
                else:
                    xs.append(x[None].to(self.device))
                    rows.append(row)
        x = torch.cat(xs) if xs else None
        return x, torch.tensor(rows, dtype=torch.long), bad


def _grey_bottom(img: torch.Tensor) -> bool:
    """The truncated-JPEG signature of :func:`~hiergeo.data.images._grey_filled`: the
    bottom rows all (128, 128, 128)."""
    if img.shape[-2] <= GREY_ROWS:
        return False
    band = img[..., -GREY_ROWS:, :]
    return bool((band == 128).all())
