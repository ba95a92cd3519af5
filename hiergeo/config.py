"""Typed configuration: dataclasses, YAML presets, ``key.sub=value`` overrides.

A run's config is the defaults, then a preset or YAML file, then command-line overrides, in
that order; the resolved config is written to ``results/<run_id>/config.yaml`` and is all a
``--resume`` needs. Presets live in ``hiergeo/presets/``: ``demo`` (used when no
``--config`` is given: the embedded synthetic demo), ``default`` (the dataclass defaults alone,
for your own store; what the names benchmark trains), ``osv5m`` (the real benchmark layout),
``photos`` (a small model on the shared playset photos, for ``make photos``), ``smoke``
(seconds, for tests).

Hardware choices (device, precision, workers) are kept apart from experiment choices in
``hardware``; they may change on ``--resume`` without changing the results' meaning.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gazetteer.keys import LEVELS

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class DemoConfig:
    """The embedded demo's synthetic data (see :mod:`hiergeo.data.demo`)."""

    n_places: int = 2000          # real GeoNames places the samples are drawn around
    samples_per_place: int = 10
    jitter_km: float = 2.0        # spread of samples around their place
    dim: int = 512                # feature dimension
    # signal amplitude per level (country, region, subregion, city), then the smooth
    # geographic field and the noise; each a fraction of the noise's norm
    level_amplitude: list[float] = field(default_factory=lambda: [0.9, 0.7, 0.6, 0.55])
    field_amplitude: float = 0.5
    field_scale_km: float = 800.0
    noise: float = 1.0
    seed: int = 0


@dataclass
class DataConfig:
    # a feature store (python -m hiergeo.features); None: the embedded demo
    train: str | None = None
    # a second feature store to validate/test on; None: a spatial split of ``train``
    val: str | None = None
    # images instead of features: a records table/folder read by hiergeo.data.read_records
    images: str | None = None
    image_dir: str | None = None
    # when ``val`` is None: hold out whole spatial cells of about ``split_cell_km`` until this
    # share of the samples is reached (hiergeo.data.spatial_split.spatial_split), then drop the
    # training samples within ``split_min_km`` of a held-out one across cell borders
    # (0: drop none; the count is in data_report.json)
    val_fraction: float = 0.1
    split_cell_km: float = 5.0
    split_min_km: float = 1.0
    label_mode: str = "osv5m"     # gazetteer.label mode when the data has no unique_* columns
    # restrict the entity set to entities seen in training (and their ancestors); a label
    # naming another entity counts as a miss (results/benchmarks/README.md#defaults-and-why)
    prune_entities: bool = True
    feature_dim: int | None = None  # expected feature dimension; None: take the store's
    max_samples: int | None = None  # use only the first N rows (quick experiments)
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class ModelConfig:
    geometry: str = "poincare"    # poincare | lorentz | euclidean | sphere
    dim: int = 16                 # dimension of the space
    c: float = 1.0                # curvature (positive; the ball has curvature -c)
    sphere_radius: float = 7.5    # sphere geometry only
    max_radius: float | None = None  # furthest a query may go from the origin (None: 0.98 x
    #                                  what float64 allows, 11.96 / sqrt(c))
    embedding: str = "construct"  # tree embedding that initialises the entity table
    # construct: how far from the origin the tree's cities start (None: 11.5, the embedding's
    # own default, 94% of what float64 allows at c = 1). Nearer the edge, sibling cities are
    # closer in angle seen from the origin, and a query must hit that angle
    # (results/benchmarks/README.md#defaults-and-why)
    radius_budget: float | None = 2.5
    # construct: push siblings apart to this multiple of the angle that keeps them further
    # from each other than from their parent (None: 1.25, the embedding's default). A larger
    # margin takes longer to construct (results/benchmarks/README.md#defaults-and-why)
    sibling_margin: float | None = 0.75
    # the head (results/benchmarks/README.md#defaults-and-why)
    hidden: int = 1024
    layers: int = 3
    dropout: float = 0.0
    # "shared": one query point scored against every level (HierLoc); "per_level": the head
    # gives each level its own point in the same space
    queries: str = "per_level"
    train_entities: bool = True
    # where entity points come from: "tree" = a free table started from the tree embedding
    # (trained by Riemannian Adam); "data" = computed from each entity's data, the mean
    # encoder feature of its training samples, its coordinates and its level, by a learnt
    # map trained with the head (hiergeo/model/entity_map.py; train_entities does not apply)
    # (results/benchmarks/README.md#model-alone-and-geometry)
    entities: str = "tree"
    entity_hidden: int = 0        # entities=data: the map's hidden width (0: linear)
    entity_residual: bool = True  # entities=data: plus a learnt tangent vector per entity
    encoder: str = "features"     # features | timm
    backbone: str | None = None   # timm name for encoder=timm (default: the embedded one)
    weights: str | None = None
    allow_download: bool = False
    random_weights: bool = False
    freeze_backbone: bool = True


@dataclass
class LossConfig:
    # per level: country, region, subregion, city
    tau: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    # negative weights (hiergeo.losses.contrastive): "paper" w = 1 + lam exp(-km / sigma_km)
    # (far negatives weigh 1; lam = 0 is plain InfoNCE, sigma = .inf weighs all 1 + lam);
    # "page" w = exp(-km / sigma_km) (far negatives weigh 0; sigma = .inf is plain InfoNCE;
    # lam unused), HierLoc's project page, kept for comparison
    weight_form: str = "paper"
    lam: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    sigma_km: list[float] = field(default_factory=lambda: [2000.0, 500.0, 150.0, 50.0])
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    # the negatives of a level: "level" = every entity of the level (HierLoc's loss; full or
    # sampled candidates below); "siblings" = the children of the positive's parent only, so
    # the loss is -log P(entity | parent), what prediction reports and scores paths by
    # (results/benchmarks/README.md#defaults-and-why)
    scope: str = "siblings"
    parent_weight: float = 0.1
    # loss scalars learnt per level with the head (log-parameterised, started from the values
    # above): any of tau, lam, sigma (sigma_km). A learnt tau is what prediction uses
    # (calibration fits on top of it). Lowering lam or sigma always lowers this loss, so
    # learning them by the same loss drives them down
    # (results/benchmarks/README.md#model-alone-and-geometry)
    learn: list[str] = field(default_factory=list)
    # geo = the loss above (HierLoc's; hiergeo.losses.contrastive). Ablations from
    # pytorch-metric-learning (hiergeo.losses.ablations): proxy_anchor (ProxyAnchorLoss,
    # alpha = 1 / tau), contrastive (ContrastiveLoss on the pairs of a MultiSimilarityMiner).
    # They score each level's queries against one reference set, with scope=siblings the
    # union of the batch's sibling groups (cousins too), with level the whole level, at once,
    # not streamed: for comparison, not for OSV-5M's size. sigma_km, lam, weight_form and the
    # candidates settings are the geo loss's only (results/benchmarks/README.md#loss-ablations)
    function: str = "geo"
    margin: float | None = None   # PML ablations, distance units (None: PML's default)
    # auto | full | sampled. Sampled candidates (distinct siblings, cousins and the rest of
    # the level, importance-weighted) estimate the same loss as full ones, with more variance
    candidates: str = "auto"
    full_max: int = 4_194_304     # auto on CPU: full when batch x level size <= this
    n_siblings: int = 32          # 0: siblings are drawn with the cousins
    n_cousins: int = 32           # 0: cousins are drawn with the rest of the level
    n_random: int = 64            # the rest of the level (>= 1)


@dataclass
class OptimConfig:
    batch_size: int = 256
    # passes over the training split; the cosine schedule spans them
    # (results/benchmarks/README.md#defaults-and-why)
    epochs: float = 3.0
    max_steps: int | None = None  # stop earlier than ``epochs`` (None: no limit)
    lr: float = 2e-3              # head (and encoder when fine-tuned), AdamW
    entity_lr: float = 1e-2       # entity table, Riemannian Adam
    weight_decay: float = 1e-4
    warmup: float = 0.05          # linear warm-up, as a share of the run's steps, in [0, 1)
    min_lr_ratio: float = 0.05    # cosine decays to lr x this
    grad_clip: float = 1.0
    stabilize: int = 10           # RiemannianAdam(stabilize=): steps between projections of
    #                               the whole table onto the space (done by hand for sparse)
    # entity table optimiser: "dense" = geoopt RiemannianAdam over the whole table every step;
    # "sparse" = geoopt SparseRiemannianAdam, which updates only the rows a batch touched
    # (lazy moments, like torch's SparseAdam); "auto" = sparse in a single CPU process, else
    # dense (DDP cannot reduce sparse gradients). On a CPU the dense step over the whole table
    # dominates a step (results/benchmarks/README.md#defaults-and-why)
    entity_optimizer: str = "auto"


@dataclass
class RunConfig:
    id: str | None = None         # results/<id>/; None: the preset's name
    out: str = "results"
    seed: int = 0
    val_every: int = 500          # steps between validations (0: only at the end)
    val_max: int = 2000           # samples used by in-training validation
    checkpoint_every: int = 200   # steps between checkpoints (0: only at the end)
    log_every: int = 20           # steps between log rows (0: only at the end)
    overwrite: bool = False       # replace an existing finished run
    tensorboard: bool = True


@dataclass
class EvalConfig:
    # beam width per level: 1 keeps each level's most probable child; wider beams find more
    # probable whole paths, which may run through less probable countries
    # (results/benchmarks/README.md#defaults-and-why)
    beams: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    topk: int = 5
    coords: str = "city"          # city | weighted
    threshold: float = 0.5
    geocoder: str = "gazetteer"   # gazetteer | reverse_geocoder (for OSV-5M's hits)
    maps: bool = True
    # after training, fit one temperature per level on the validation split so that the
    # reported probabilities are calibrated (hiergeo/predict/calibration.py)
    calibrate: bool = True
    calibration_max: int = 50_000  # validation samples used for it (a random subset)
    # retrieval memory (hiergeo/predict/memory.py): the k training samples nearest a query
    # (cosine of encoder features) vote at each level, mixed into the model's probabilities
    # with a per-level weight fitted on the validation split with the temperatures (0 where
    # it does not help). Needs eval.calibrate and encoder=features
    # (results/benchmarks/README.md#defaults-and-why)
    memory: bool = True
    memory_k: int = 20
    memory_temperature: float = 0.05
    # how the memory searches (hiergeo/predict/memory_index.py): exact (every feature in
    # float16, N x d x 2 bytes), ivfpq (FAISS, m + 8 bytes a row, approximate) or auto:
    # exact while N x d x 2 bytes <= memory_exact_max_gb GiB, ivfpq above
    # (results/benchmarks/README.md#retrieval-memory-at-scale)
    memory_index: str = "auto"
    memory_exact_max_gb: float = 1.0
    # ivfpq: lists scanned per query; None: half of them (what matched exact search on the
    # names benchmark; fewer is faster and less accurate)
    memory_nprobe: int | None = None
    # ivfpq: candidates per neighbour re-ranked by exact cosine, their rows read from the
    # store (or the exported memory.safetensors) on demand; 1: the codes' similarities
    memory_refine: int = 4


@dataclass
class HardwareConfig:
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    precision: str = "auto"       # auto (bf16 on GPU) | fp32 | bf16
    workers: int = 2              # image decoding worker processes (data.images): training
    #                               batches; evaluation decodes with as many threads
    threads: int | None = None    # torch CPU threads (None: torch's default)
    # torchrun: seconds a process waits at a collective before failing (None: torch's
    # default, 10 min on NCCL, 30 on gloo). Raise it when validation (run.val_every, on
    # process 0 alone) takes longer than that
    dist_timeout_s: int | None = None
    # GiB the blocked full-candidate loss's temporaries may take (its blocks are sized to
    # fit); None: the default, on a GPU min(8 GiB, half its free memory), on a CPU 64 MiB
    # (hiergeo.losses.contrastive.block_size). Smaller leaves room for a fine-tuned
    # backbone or a second job, at a small cost in time (results/benchmarks/README.md)
    loss_memory_gb: float | None = None

    @property
    def loss_memory_bytes(self) -> int | None:
        """``loss_memory_gb`` in bytes, for ``block_size(..., budget_bytes=...)``."""
        return None if self.loss_memory_gb is None else int(self.loss_memory_gb * 2**30)


@dataclass
class Config:
    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names it."""


def _coerce(value, tp, where: str):
    """Check/convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, Number):
            value = value.value
        elif isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or int(value) != value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{where}: NaN is not a usable value")
        return float(value)
    if tp is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a resolved config.yaml's unquoted number
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)  # a Number's text as written: run.id=010 stays "010"
    raise ConfigError(f"{where}: unsupported type {tp}")


#: Keys that were replaced, and what replaced them.
RENAMED = {
    "optim.warmup_steps": "optim.warmup (a share of the run's steps, e.g. 0.05: a warm-up in "
                          "steps did not follow the run's length)",
}


def _merge(obj, values: dict, where: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}{key}"
        if path in RENAMED:
            raise ConfigError(f"config key {path!r} is gone; use {RENAMED[path]}")
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; known keys here: "
                              f"{', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping of its keys, got {value!r}")
            _merge(current, value, path + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def parse_override(text: str) -> dict:
    """``"optim.lr=1e-3"`` -> ``{"optim": {"lr": 0.001}}`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


class Number(str):
    """A number as written in YAML (``010``, ``1.0e+3``, ``.inf``): its text, for string
    fields (run.id=2024 is "2024"), and ``.value``, YAML's reading of it, for number
    fields."""

    value: int | float

    def __new__(cls, text: str, value):
        out = super().__new__(cls, text)
        out.value = value
        return out


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, keeping each number's text beside its value (:class:`Number`)."""


for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
    _Loader.add_constructor(_tag, lambda loader, node, _tag=_tag: Number(
        node.value, getattr(yaml.SafeLoader, {"tag:yaml.org,2002:int": "construct_yaml_int",
                                              "tag:yaml.org,2002:float": "construct_yaml_float"}[
            _tag])(loader, node)))


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_yaml(path: Path) -> dict:
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset name or YAML file (``demo`` when None) <- overrides, validated.

    A YAML file may name a preset to start from with ``base: NAME``."""
    config = "demo" if config is None else config
    path = Path(config)
    if (PRESETS_DIR / f"{config}.yaml").exists() and not path.suffix:
        path = PRESETS_DIR / f"{config}.yaml"
    elif not path.exists():
        raise ConfigError(f"{config}: no such file, and not a preset (presets: "
                          f"{', '.join(presets())})")
    values = _read_yaml(path)
    base = values.pop("base", None)
    cfg = load_config(base) if base is not None else Config()
    cfg.preset = path.stem
    _merge(cfg, values)
    for text in overrides or []:
        _merge(cfg, parse_override(text))
    validate(cfg)
    return cfg


def validate(cfg: Config, *, loss_registered: bool = True) -> None:
    """Refuse a config whose values cannot work together, naming the key. One flat list of
    independent checks, one or two per key (longer than a screen on purpose: splitting it
    would scatter the checks a reader looks for in one place). ``loss_registered=False``
    (a finished run's config, read to evaluate or export it) lets ``loss.function`` name a
    loss class this process has not registered: only training builds the loss."""
    from .devices import parse_device
    from .geometry.spaces import SPACE_CLASSES
    from .model.geomodel import ENCODERS, QUERY_MODES

    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    from .losses import LOSS_CLASSES, WEIGHT_FORMS

    n = len(LEVELS)
    for name in ("tau", "sigma_km", "lam", "weights"):
        v = getattr(cfg.loss, name)
        need(len(v) == n, f"loss.{name} needs {n} values (one per level), got {v}")
    need(all(t > 0 for t in cfg.loss.tau), f"loss.tau must be positive, got {cfg.loss.tau}")
    need(all(s > 0 for s in cfg.loss.sigma_km), "loss.sigma_km must be positive (.inf "
         f"allowed), got {cfg.loss.sigma_km}")
    need(all(0 <= v < float("inf") for v in cfg.loss.lam),
         f"loss.lam must be finite and >= 0 (0: plain InfoNCE), got {cfg.loss.lam}")
    need(cfg.loss.weight_form in WEIGHT_FORMS, f"loss.weight_form must be one of "
         f"{', '.join(WEIGHT_FORMS)}, not {cfg.loss.weight_form!r}")
    need(cfg.loss.n_siblings >= 0 and cfg.loss.n_cousins >= 0,
         f"loss.n_siblings and loss.n_cousins must be >= 0, got {cfg.loss.n_siblings}, "
         f"{cfg.loss.n_cousins}")
    need(cfg.loss.n_random >= 1, "loss.n_random must be >= 1 (sampled candidates must cover "
         f"the rest of the level), got {cfg.loss.n_random}")
    need(all(w >= 0 for w in cfg.loss.weights) and sum(cfg.loss.weights) > 0,
         f"loss.weights must be >= 0 and not all 0, got {cfg.loss.weights}")
    kind = LOSS_CLASSES.get(cfg.loss.function)
    need(kind is not None or not loss_registered, f"loss.function must be one of "
         f"{', '.join(LOSS_CLASSES)}, not {cfg.loss.function!r} (a loss of your own: import "
         "the module that registers it before loading the config)")
    need(cfg.loss.margin is None or (cfg.loss.margin > 0 and (
        kind is None or kind.default_margin is not None)),
         f"loss.margin is for the loss functions that take one (the PML ablations), "
         f"positive, got {cfg.loss.margin} with loss.function={cfg.loss.function}")
    need(kind is None or kind.samples_candidates or cfg.loss.candidates != "sampled",
         f"loss.function={cfg.loss.function} scores whole reference sets: "
         "loss.candidates=sampled is for the loss functions that sample them (geo)")
    need(cfg.loss.scope in ("level", "siblings"),
         f"loss.scope must be level or siblings, not {cfg.loss.scope!r}")
    need(cfg.loss.candidates in ("auto", "full", "sampled"),
         f"loss.candidates must be auto, full or sampled, not {cfg.loss.candidates!r}")
    need(cfg.eval.memory_index in ("auto", "exact", "ivfpq"),
         f"eval.memory_index must be auto, exact or ivfpq, not {cfg.eval.memory_index!r}")
    need(0 < cfg.eval.memory_exact_max_gb < math.inf
         and (cfg.eval.memory_nprobe is None or cfg.eval.memory_nprobe >= 1)
         and cfg.eval.memory_refine >= 1,
         "eval.memory_exact_max_gb must be a positive number of GiB, eval.memory_nprobe and "
         f"eval.memory_refine >= 1, got {cfg.eval.memory_exact_max_gb}, "
         f"{cfg.eval.memory_nprobe}, {cfg.eval.memory_refine}")
    need(cfg.eval.memory_k >= 1 and cfg.eval.memory_temperature > 0,
         f"eval.memory_k must be >= 1 and eval.memory_temperature > 0, got "
         f"{cfg.eval.memory_k}, {cfg.eval.memory_temperature}")
    need(cfg.model.queries in QUERY_MODES,
         f"model.queries must be shared or per_level, not {cfg.model.queries!r}")
    need(cfg.model.geometry in SPACE_CLASSES, f"model.geometry must be one of "
         f"{', '.join(SPACE_CLASSES)}, not {cfg.model.geometry!r}")
    need(cfg.model.dim >= 2, f"model.dim must be >= 2, got {cfg.model.dim}")
    need(cfg.model.entities in ("tree", "data"),
         f"model.entities must be tree or data, not {cfg.model.entities!r}")
    need(cfg.model.entity_hidden >= 0,
         f"model.entity_hidden must be >= 0 (0: linear), got {cfg.model.entity_hidden}")
    need(cfg.model.entities == "tree" or cfg.model.encoder == "features",
         "model.entities=data needs model.encoder=features (its prototypes are the means "
         "of the training features)")
    learn = cfg.loss.learn
    need(set(learn) <= {"tau", "lam", "sigma"} and len(set(learn)) == len(learn),
         f"loss.learn takes distinct names among tau, lam, sigma, got {learn}")
    need(not learn or cfg.loss.function == "geo",
         f"loss.learn is for loss.function=geo, not {cfg.loss.function} (the default preset "
         "learns tau, lam, sigma: add loss.learn=[])")
    need(not learn or cfg.loss.scope == "siblings" or cfg.loss.candidates == "sampled",
         "loss.learn needs loss.scope=siblings or loss.candidates=sampled (the streamed "
         "full-level loss passes no gradient to the scalars; the default preset learns tau, "
         "lam, sigma: add loss.learn=[])")
    need("lam" not in learn or (cfg.loss.weight_form == "paper"
                                and all(v > 0 for v in cfg.loss.lam)),
         f"loss.learn=lam needs loss.weight_form=paper and loss.lam > 0 (it is learnt as its "
         f"logarithm), got {cfg.loss.weight_form}, {cfg.loss.lam}")
    need("sigma" not in learn or all(math.isfinite(v) for v in cfg.loss.sigma_km),
         f"loss.learn=sigma needs finite loss.sigma_km, got {cfg.loss.sigma_km}")
    need(cfg.model.c > 0, f"model.c (curvature) must be positive, got {cfg.model.c}")
    need(cfg.model.encoder in ENCODERS,
         f"model.encoder must be one of {', '.join(ENCODERS)}, not {cfg.model.encoder!r}")
    need(min(cfg.run.log_every, cfg.run.checkpoint_every, cfg.run.val_every) >= 0,
         "run.log_every, run.checkpoint_every and run.val_every must be >= 0 (0: only at the "
         f"end), got {cfg.run.log_every}, {cfg.run.checkpoint_every}, {cfg.run.val_every}")
    need(cfg.optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {cfg.optim.batch_size}")
    need(cfg.optim.epochs > 0, f"optim.epochs must be positive, got {cfg.optim.epochs}")
    need(0 <= cfg.optim.warmup < 1,
         f"optim.warmup is a share of the run's steps, in [0, 1), got {cfg.optim.warmup}")
    need(cfg.optim.entity_optimizer in ("auto", "dense", "sparse"),
         "optim.entity_optimizer must be auto, dense or sparse, not "
         f"{cfg.optim.entity_optimizer!r}")
    need(0 < cfg.data.val_fraction < 1,
         f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    need(0 < cfg.data.split_cell_km < float("inf"),
         f"data.split_cell_km must be a positive number of km, got {cfg.data.split_cell_km}")
    need(0 <= cfg.data.split_min_km < float("inf"),
         f"data.split_min_km must be >= 0 km (0: drop none), got {cfg.data.split_min_km}")
    need(len(cfg.eval.beams) == n and all(b >= 1 for b in cfg.eval.beams),
         f"eval.beams needs {n} widths >= 1, got {cfg.eval.beams}")
    need(cfg.eval.coords in ("city", "weighted"),
         f"eval.coords must be city or weighted, not {cfg.eval.coords!r}")
    need(cfg.hardware.dist_timeout_s is None or cfg.hardware.dist_timeout_s > 0,
         f"hardware.dist_timeout_s must be > 0, not {cfg.hardware.dist_timeout_s}")
    need(cfg.hardware.precision in ("auto", "fp32", "bf16"),
         f"hardware.precision must be auto, fp32 or bf16, not {cfg.hardware.precision!r}")
    try:
        parse_device(cfg.hardware.device)
    except ValueError as exc:
        raise ConfigError(f"hardware.device: {exc}") from None
    need(cfg.hardware.loss_memory_gb is None or 0 < cfg.hardware.loss_memory_gb < math.inf,
         "hardware.loss_memory_gb must be a positive number of GiB (null: the default), "
         f"not {cfg.hardware.loss_memory_gb}")
    need(cfg.data.images is None or cfg.model.encoder == "timm",
         "data.images needs model.encoder=timm")


def from_dict(values: dict) -> Config:
    """A config from a resolved ``config.yaml`` (a run's: to resume, evaluate or export it).
    A run written before ``model.queries`` existed had one shared query point, whatever
    today's default. Its ``loss.function`` may be a loss this process has not registered
    (evaluation and export do not need the loss; resuming refuses it when it builds the
    loss)."""
    cfg = Config()
    values = dict(values)
    if isinstance(values.get("model"), dict) and "queries" not in values["model"]:
        values["model"] = {**values["model"], "queries": "shared"}
    _merge(cfg, values)
    validate(cfg, loss_registered=False)
    return cfg
