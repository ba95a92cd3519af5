"""What every backbone shares, timm's (:mod:`hiergeo.model.backbones`) or a Hugging Face
vision tower (:mod:`hiergeo.model.hf_backbones`): the error for missing or wrong weights, and
the eval preprocessing (:class:`Preprocess`) the feature extractor and the GPU decoder know."""

from __future__ import annotations

import torch


class WeightsError(RuntimeError):
    """No usable weights: the message says how to provide them."""


class Preprocess:
    """A backbone's eval transform (called on a PIL image), and ``min_side``: the short side
    its first resize makes (None: unknown; decode at full size). Picklable, for DataLoader
    workers.

    When the transform is timm's usual ``Resize(short side) -> CenterCrop -> to tensor ->
    Normalize`` (:func:`eval_steps`), the resize runs on a uint8 tensor (torchvision's
    vectorised antialiased resize, which follows PIL's to within one grey level) instead of
    PIL's: the same pixels about five times faster, which matters when the CPUs decode for a
    GPU. Any other transform runs as timm made it."""

    def __init__(self, transform, min_side: int | None = None, uint8: bool = False):
        self.transform, self.min_side = transform, min_side
        self.steps = eval_steps(transform)
        # uint8: leave out the last steps (to float, normalise) for :meth:`normalize` to do
        # on the model's device, a batch at a time: a quarter of the bytes for workers to
        # hand over and pin, and less work for them
        self.uint8 = uint8 and self.steps is not None

    def __call__(self, img):
        if self.steps is None:
            return self.transform(img)
        import numpy as np
        from torchvision.transforms.v2 import functional as F

        size, interpolation, crop, mean, std = self.steps
        if img.mode != "RGB":
            img = img.convert("RGB")
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        x = F.center_crop(F.resize(x, [size], interpolation=interpolation, antialias=True),
                          list(crop)).contiguous()  # uint8 [C, H, W]: cheap to reorder
        if self.uint8:
            return x
        return F.normalize(x.float().div_(255), mean, std, inplace=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of :meth:`__call__`'s outputs, normalised for the model: uint8 ones (the
        ``uint8`` mode) to float on their device; float ones as they are."""
        if x.dtype != torch.uint8:
            return x
        mean = torch.tensor(self.steps[3], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.steps[4], device=x.device).view(1, -1, 1, 1)
        return x.float().div_(255).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Preprocess(min_side={self.min_side}, {self.transform!r})"


def eval_steps(transform) -> tuple | None:
    """``(short side, interpolation, (crop h, crop w), mean, std)`` of a transform that is
    ``Resize(short side) -> CenterCrop -> to tensor -> Normalize`` (timm's eval transform for
    a square input), or None for any other."""
    from torchvision.transforms import CenterCrop, Normalize, Resize

    steps = list(getattr(transform, "transforms", []))
    if (len(steps) != 4 or type(steps[0]) is not Resize or type(steps[1]) is not CenterCrop
            or type(steps[3]) is not Normalize or steps[0].max_size is not None
            or type(steps[2]).__name__ not in ("MaybeToTensor", "ToTensor")):
        return None
    size = resize_short_side(transform)
    if size is None:
        return None
    mean = [float(v) for v in torch.as_tensor(steps[3].mean).flatten()]
    std = [float(v) for v in torch.as_tensor(steps[3].std).flatten()]
    return size, steps[0].interpolation, tuple(steps[1].size), mean, std


def resize_short_side(transform) -> int | None:
    """The short side a torchvision ``Compose``'s first step resizes to, when that step is a
    ``Resize`` to one side (timm's eval transform for square inputs); else None (a resize to
    a fixed height and width, or none: no reduced decoding)."""
    from torchvision.transforms import Resize

    steps = getattr(transform, "transforms", [])
    if not steps or type(steps[0]) is not Resize:
        return None
    size = steps[0].size
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) == 1:
        return int(size[0])
    return None
