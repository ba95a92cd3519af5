"""Hugging Face ``transformers`` vision towers as backbones: ``create_backbone("hf:SOURCE")``.

SOURCE is a local folder written by ``save_pretrained`` (``config.json``, ``model.safetensors``
or ``pytorch_model.bin``, ``preprocessor_config.json``), which works offline, or a hub name
such as ``geolocal/StreetCLIP``, read from the local Hugging Face cache only, unless
``allow_download`` lets ``huggingface_hub`` fetch it.

Which model: ``AutoConfig`` reads the config; a composite one (CLIP, SigLIP: a text and a
vision tower) gives its ``vision_config``, so StreetCLIP's full ``CLIPModel`` checkpoint loads
as a ``CLIPVisionModel`` and its text tower is left unread. ``AutoModel``'s mapping then
picks the vision tower (``CLIPVisionModel``, ``SiglipVisionModel``, ``Dinov2Model``,
``ViTModel``...) and transformers' ``from_pretrained`` loads the checkpoint into it (it knows
each family's tensor names and prefixes: a full CLIPModel keeps the tower under
``vision_model.``); a tensor the tower needs and the file lacks is an error.

The feature is the tower's ``pooler_output``: CLIP's is the CLS token after the last layer
norm (before ``visual_projection``: the projection maps into the space shared with the text
tower, trained for matching captions, and a checkpoint saved as a ``CLIPVisionModel`` has
none); DINOv2's is the layer-normed CLS token; SigLIP's its attention-pooling head's output;
ViT's a dense + tanh layer on CLS (untrained in some checkpoints: prefer DINOv2 or CLIP).

Preprocessing is the model's own image processor (``preprocessor_config.json``): resize
(shortest edge, or a fixed height and width), centre crop, mean, std, resampling filter,
turned into the torchvision steps :class:`~hiergeo.model.backbones.Preprocess` knows, so the
uint8 decoding path and the GPU path work as for timm models. ``data_config`` records them.

The weights file is the backbone's ``weights``: :mod:`hiergeo.features` pins its sha256 in
``store.json`` and exports carry it, as for a timm model with a local checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone_base import Preprocess, WeightsError, resize_short_side

log = logging.getLogger(__name__)

PREFIX = "hf:"
INSTALL = "pip install 'hiergeo[hf]'"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: PIL's resampling numbers (what processors store) -> the names timm's data configs use
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def is_hf(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise WeightsError(f"hf: backbones need the transformers package: {INSTALL}") from exc
    return transformers


@dataclass
class HfBackbone:
    """A transformers vision tower plus its processor's preprocessing (see the module
    docstring); the interface of a timm :class:`~hiergeo.model.backbones.Backbone`."""

    name: str
    model: torch.nn.Module
    data_config: dict
    weights: str  # the weights file, or "random"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def transform(self, draft: bool = True, uint8: bool = False) -> Preprocess:
        t = hf_transform(self.data_config)
        return Preprocess(t, resize_short_side(t) if draft else None, uint8=uint8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


def hf_transform(dc: dict):
    """``Resize -> CenterCrop -> to tensor -> Normalize`` (PIL image -> float tensor) for a
    data config from :func:`processor_config`; without the crop when the processor has none."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    resize = dc["resize"]
    steps = [Resize(resize if isinstance(resize, int) else list(resize),
                    interpolation=InterpolationMode(dc["interpolation"]))]
    if dc.get("center_crop", True):
        steps.append(CenterCrop(list(dc["input_size"][1:])))
    return Compose([*steps, ToTensor(), Normalize(dc["mean"], dc["std"])])


def _size(d, where: str, *, crop: bool = False) -> int | tuple[int, int]:
    get = d.get if isinstance(d, dict) else lambda k: getattr(d, k, None)
    if isinstance(d, int):
        return d if not crop else (d, d)
    if not crop and get("shortest_edge"):
        return int(get("shortest_edge"))
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    raise WeightsError(f"{where}: its image processor's {'crop_size' if crop else 'size'} "
                       f"{d!r} is neither a shortest edge nor a height and width; hiergeo "
                       "cannot reproduce it")


def processor_config(proc, where: str) -> dict:
    """A data config (the keys timm's have, plus ``resize`` and ``center_crop``) from a
    transformers image processor; what hiergeo cannot reproduce is refused by name."""
    if not getattr(proc, "do_resize", True):
        raise WeightsError(f"{where}: its image processor does not resize, so photos of "
                           "different sizes cannot be batched")
    if getattr(proc, "do_rescale", True) and abs(float(proc.rescale_factor) - 1 / 255) > 1e-9:
        raise WeightsError(f"{where}: rescale_factor {proc.rescale_factor} (hiergeo scales "
                           "pixels by 1/255)")
    resize = _size(proc.size, where)
    crop = bool(getattr(proc, "do_center_crop", False))
    if crop:
        hw = _size(proc.crop_size, where, crop=True)
    elif isinstance(resize, tuple):
        hw = resize
    else:
        raise WeightsError(f"{where}: its image processor resizes the shortest edge without "
                           "a centre crop, so photos of different shapes cannot be batched")
    r = getattr(proc, "resample", 3)
    r = getattr(r, "value", r)
    if isinstance(r, str):
        name = r.lower()
    else:
        name = RESAMPLE.get(int(r))
    if name not in RESAMPLE.values():
        log.warning("%s: resampling filter %r not available on tensors; resizing bicubic",
                    where, r)
        name = "bicubic"
    normalise = getattr(proc, "do_normalize", True)
    mean = tuple(float(v) for v in proc.image_mean) if normalise else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in proc.image_std) if normalise else (1.0, 1.0, 1.0)
    if not getattr(proc, "do_rescale", True):
        raise WeightsError(f"{where}: its image processor does not rescale pixels to [0, 1]")
    return {"input_size": (3, *hw), "interpolation": name, "mean": mean, "std": std,
            "resize": resize, "center_crop": crop,
            "crop_pct": (hw[0] / resize) if isinstance(resize, int) else 1.0,
            "crop_mode": "center"}


def _source(spec: str, allow_download: bool) -> tuple[Path, str, bool]:
    """The local folder holding ``spec``'s config and processor files, the backbone's name
    as store.json keeps it (``hf:`` + an absolute folder, or the hub name), and whether it
    is a hub repository (a cache snapshot, whose files are fetched one by one)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p.resolve(), PREFIX + str(p.resolve()), False
    pathlike = spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or "\\" in spec
    if pathlike or p.exists():
        raise WeightsError(f"{PREFIX}{spec}: no such folder (hf: takes a folder written by "
                           "save_pretrained, or a hub name such as geolocal/StreetCLIP)")
    cfg = _hub_file(spec, "config.json", allow_download)
    if cfg is None:
        raise WeightsError(f"{PREFIX}{spec}: no config.json in that hub repository")
    if _hub_file(spec, "preprocessor_config.json", allow_download) is None:
        raise WeightsError(f"{PREFIX}{spec}: no preprocessor_config.json in the cache or the "
                           "hub repository: hiergeo takes the model's preprocessing from it")
    return cfg.parent, PREFIX + spec, True


def _hub_file(repo: str, filename: str, allow_download: bool) -> Path | None:
    """``filename`` of hub repo ``repo`` from the local cache (or fetched when
    ``allow_download``); None when the repository has no such file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=not allow_download))
    except LocalEntryNotFoundError as exc:
        if allow_download:
            raise WeightsError(f"{PREFIX}{repo}: cannot fetch {filename} ({exc})") from exc
        if filename != "config.json":
            return None  # in the cache without this file: the caller tries the next
        raise WeightsError(
            f"{PREFIX}{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): pass "
            "--allow-download (allow_download=True) to fetch it, or a folder written by "
            "save_pretrained") from exc
    except EntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsError(f"{PREFIX}{repo}: cannot fetch {filename} ({exc})") from exc


def _weights_file(folder: Path, spec: str, hub: bool, allow_download: bool) -> Path:
    for name in WEIGHT_FILES:
        f = _hub_file(spec, name, allow_download) if hub else folder / name
        if f is not None and f.is_file():
            return f
    if (folder / "model.safetensors.index.json").exists():
        raise WeightsError(f"{PREFIX}{spec}: sharded weights (model.safetensors.index.json) "
                           "are not supported yet: save the model as one file "
                           "(save_pretrained(..., max_shard_size='100GB'))")
    where = ("the Hugging Face cache (--allow-download fetches them)" if hub and
             not allow_download else str(folder))
    raise WeightsError(f"{PREFIX}{spec}: no weights file ({' or '.join(WEIGHT_FILES)}) in "
                       f"{where}")


def _weights_name(path: Path) -> str:
    """``model.safetensors`` or ``pytorch_model.bin``, told apart by the file's bytes (hub
    cache blobs have no suffix): the name transformers looks for."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        return "pytorch_model.bin" if f.read(2) == b"PK" else "model.safetensors"


def _load(tf, cls, vcfg, folder: Path, path: Path, where: str) -> torch.nn.Module:
    """``cls`` with the weights ``path``, read by transformers itself (it knows each
    family's renamed and prefixed tensor names: a full CLIPModel's ``vision_model.``, old
    checkpoints' names): from ``folder`` when the file is its own, else from a temporary
    folder of links to the config and the file. A tensor the tower needs and the file lacks
    is an error."""
    import tempfile

    quiet = tf.utils.logging
    level = quiet.get_verbosity()
    quiet.set_verbosity_error()  # the text tower's tensors, listed one by one, are expected
    quiet.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = folder
            if path.resolve() != (folder / _weights_name(path)).resolve():
                src = Path(tmp)
                (src / "config.json").symlink_to(folder / "config.json")
                (src / _weights_name(path)).symlink_to(path.resolve())
            model, info = cls.from_pretrained(str(src), config=vcfg, local_files_only=True,
                                              output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{where}: transformers cannot load {path} into a "
                           f"{cls.__name__} ({str(exc).splitlines()[0]})") from exc
    finally:
        quiet.set_verbosity(level)
        quiet.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise WeightsError(f"{path}: the weights lack {len(missing)} of the {cls.__name__}'s "
                           f"tensors (e.g. {sorted(missing)[:3]}): not this model's weights")
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        raise WeightsError(f"{path}: tensors of other shapes than the {cls.__name__}'s (e.g. "
                           f"{mismatched[:2]}): not this model's weights")
    return model.float()  # transformers 5 keeps a checkpoint's own dtype


#: vision towers whose embeddings interpolate their position encodings to any input size
#: (DINOv2's always do); CLIP, SigLIP and ViT raise at the first forward for another size
#: than the config's ``image_size`` unless asked to interpolate, which hiergeo does not
_INTERPOLATING = {"dinov2", "dinov2_with_registers"}


def _check_input_size(vcfg, data_config: dict, where: str) -> None:
    """Refuse now, not at the first batch on every rank, a processor whose crop is not the
    size the model takes."""
    size = getattr(vcfg, "image_size", None)
    if size is None or getattr(vcfg, "model_type", "") in _INTERPOLATING:
        return
    want = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    got = tuple(int(v) for v in data_config["input_size"][1:])
    if got != want:
        raise WeightsError(f"{where}: its image processor gives {got[0]}x{got[1]} images but "
                           f"the {type(vcfg).__name__} takes {want[0]}x{want[1]} "
                           "(image_size in config.json); save the model's own processor "
                           "beside it")


#: the files that describe a tower and its preprocessing (no weights): what an exported model
#: that includes the backbone carries to rebuild it without its source (:mod:`hiergeo.export`)
DESCRIPTION_FILES = ("config.json", "preprocessor_config.json")


def description_files(name: str) -> dict[str, str]:
    """The text of ``name``'s :data:`DESCRIPTION_FILES` (from its folder or the local cache)."""
    folder, _, _ = _source(name[len(PREFIX):], allow_download=False)
    return {f: (folder / f).read_text(encoding="utf-8") for f in DESCRIPTION_FILES}


def create_hf_backbone(name: str, *, weights: str | Path | None = None,
                       allow_download: bool = False, random_weights: bool = False,
                       files: dict[str, str] | None = None) -> HfBackbone:
    """The vision tower ``name`` (``hf:FOLDER`` or ``hf:org/name``) with the processor's
    preprocessing; ``weights``: a weights file to load instead of the source's own (what an
    exported model pins); ``random_weights``: untrained, for timing; ``files``: the
    :data:`DESCRIPTION_FILES`' text to build it from instead of its source (untrained: the
    caller loads the weights), what an exported model with its backbone included does."""
    spec = name[len(PREFIX):]
    if not spec:
        raise WeightsError("hf: needs a folder or a hub name (hf:geolocal/StreetCLIP)")
    if files is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for f in DESCRIPTION_FILES:
                (Path(tmp) / f).write_text(files[f], encoding="utf-8")
            b = create_hf_backbone(PREFIX + tmp, random_weights=True)
        b.name = name
        return b
    tf = _transformers()
    folder, full, hub = _source(spec, allow_download)
    try:
        cfg = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{name}: transformers cannot read its config.json ({exc})") from exc
    vcfg = getattr(cfg, "vision_config", None) or cfg
    if not (folder / "preprocessor_config.json").is_file():
        raise WeightsError(f"{name}: no preprocessor_config.json in {folder} (save the "
                           "model's image processor beside it: processor.save_pretrained)")
    try:
        proc = tf.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{name}: no usable image processor ({exc}): save the model's "
                           "image processor beside it (processor.save_pretrained)") from exc
    data_config = processor_config(proc, name)
    _check_input_size(vcfg, data_config, name)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(vcfg)]
    except KeyError:
        raise WeightsError(f"{name}: transformers has no vision model for a "
                           f"{type(vcfg).__name__}") from None
    if random_weights:
        model, source = cls(vcfg), "random"
    else:
        path = Path(weights) if weights is not None else _weights_file(folder, spec, hub,
                                                                       allow_download)
        model, source = _load(tf, cls, vcfg, folder, path, name), str(path)
    model.eval()
    return HfBackbone(name=full, model=model, data_config=data_config, weights=source)

