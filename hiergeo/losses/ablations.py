"""pytorch-metric-learning losses with the entity table as proxies.

A PML loss compares a batch's embeddings with reference embeddings (``ref_emb``). Here the
references are entity points, so the entity table plays the part of PML's proxies, and each
sample's label is the row of its entity among them. Distances are the space's own
(:class:`~hiergeo.geometry.pml_distance.SpaceDistance`), so PML's losses, miners and
reducers measure in the ball.

- :class:`GeoWeightedProxyLoss`: the shipped loss (HierLoc's, computed by
  :class:`~hiergeo.losses.contrastive.GeoWeightedContrastive`, its one home) through PML's
  interface, for use with PML's reducers and regularisers (it weighs every negative itself,
  so it takes no miner).
- :class:`EntityProxyAnchor`: PML's ``ProxyAnchorLoss`` (Kim et al., CVPR 2020) over given
  proxies instead of a table of its own.
- :func:`ablation`: the losses ``loss.function`` selects in the trainer besides the shipped
  ``geo``: ``proxy_anchor`` and ``contrastive`` (PML's ``ContrastiveLoss`` on the pairs PML's
  ``MultiSimilarityMiner`` keeps). ``python benchmarks/bench_losses.py`` measures them
  against the shipped loss on the names benchmark (``results/benchmarks/names_losses.md``).

Memory: PML scores every query against every reference at once. Per level, at the peak of
forward and backward, about :data:`PEAK_BYTES_PER_PAIR` bytes per (query, reference) pair,
``B x U`` pairs for ``B`` queries and ``U`` references; the shipped loss streams its table in
blocks instead (:func:`~hiergeo.losses.contrastive.block_size`).
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import common_functions as c_f

from ..geometry.pml_distance import SpaceDistance
from ..geometry.spaces import Poincare
from .contrastive import GeoWeightedContrastive, block_size, cuda_budget
from .objective import LOSS_CLASSES

#: Peak bytes per (query, reference) pair of one level's ablation, forward and backward:
#: float64 ``[B, U]`` tensors (distances, their autograd graph, PML's masks: one-hot labels in
#: int64 for ``proxy_anchor``; the miner's sorted copies and pair indices for
#: ``contrastive``). Measured on a CPU (no GPU measurement yet), used as the GPU's guard too:
#: peak RSS beyond the inputs, Poincaré ball, B = 512, U = 2,000
#: and 16,000: 107 and 80 (``results/benchmarks/loss_memory_pml.json``:
#: ``MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/bench_loss_memory.py --modes
#: proxy_anchor,contrastive --cases 512x2000,512x16000 --out ...``). What a level saves for
#: backward stays until the step's backward, so a step's levels add up.
PEAK_BYTES_PER_PAIR = {"proxy_anchor": 108, "contrastive": 81}


class GeoWeightedProxyLoss(pml_losses.BaseMetricLossFunction):
    """HierLoc's geo-weighted loss as a PML loss whose proxies are entity points.

    ``loss(z [B, D], labels [B], ref_emb=points [N, D], latlon=[B, 2], ref_latlon=[N, 2])``:
    ``labels`` are rows of ``ref_emb`` (each sample's entity), ``latlon`` the samples'
    locations and ``ref_latlon`` the entities' centroids, in degrees (keyword-only, after
    PML's own arguments). The value is :meth:`GeoWeightedContrastive.full`'s, per sample,
    reduced by the PML reducer (the mean by default, as the trainer's). With ``lam = 0`` it
    is PML's ``NTXentLoss`` in the same space.

    Args:
        tau, sigma_km, lam, form: as :class:`GeoWeightedContrastive`.
        block: entities per block (:meth:`GeoWeightedContrastive.full`); None: sized from
            the device's memory (:func:`~hiergeo.losses.contrastive.block_size`); 0: all at
            once.
        distance: a :class:`SpaceDistance` (default: the Poincaré ball, c = 1).
        **kwargs: PML's (``reducer``, ``embedding_regularizer``, ...).
    """

    def __init__(self, tau: float = 0.1, sigma_km: float = 1000.0, lam: float = 1.0,
                 form: str = "paper", block: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.distance, SpaceDistance) or self.distance.is_inverted:
            raise TypeError("GeoWeightedProxyLoss needs a hiergeo SpaceDistance (a distance, "
                            f"not a similarity), not {self.distance!r}")
        self.geo = GeoWeightedContrastive(self.distance.space, tau, sigma_km, lam, form)
        self.block = block
        self._latlon = None

    def get_default_distance(self):
        return SpaceDistance(Poincare())

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None,
                ref_labels=None, *, latlon, ref_latlon):
        if indices_tuple is not None:
            raise ValueError("GeoWeightedProxyLoss weighs every negative itself; it takes no "
                             "miner's indices_tuple")
        if ref_emb is None or ref_labels is not None:
            raise ValueError("GeoWeightedProxyLoss needs the entity points as ref_emb, and "
                             "labels that are their rows (no ref_labels)")
        if len(ref_latlon) != len(ref_emb) or len(latlon) != len(embeddings):
            raise ValueError(f"latlon needs a row per embedding ({len(embeddings)}) and "
                             f"ref_latlon one per reference ({len(ref_emb)})")
        self._latlon = (latlon, ref_latlon)
        try:
            return super().forward(embeddings, labels, ref_emb=ref_emb)
        finally:
            self._latlon = None

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        latlon, ref_latlon = self._latlon
        block = self.block
        if block is None:
            block = block_size(len(embeddings), len(ref_emb), embeddings.device)
        out = self.geo.full(embeddings, ref_emb, ref_latlon, latlon, labels, block=block or None)
        return {"loss": {"losses": out["per_sample"],
                         "indices": c_f.torch_arange_from_size(embeddings),
                         "reduction_type": "element"}}


class EntityProxyAnchor(pml_losses.ProxyAnchorLoss):
    """PML's ``ProxyAnchorLoss`` whose proxies are passed in: ``loss(z, labels,
    ref_emb=points)``, ``labels`` the rows of ``points``. PML's class keeps a proxy
    ``Parameter`` of its own and casts it to the batch's dtype; the entity table is trained by
    its own optimiser and stays in float64, so this one holds none and casts nothing.

    Give it ``SpaceDistance(space, similarity=True)``: PML's formulas are written for a
    similarity ``s`` (here ``-d``), ``exp(-alpha (s - margin))`` for positives and
    ``exp(alpha (s + margin))`` for negatives, and with a plain distance the margin would make
    both easier. ``alpha`` scales distances (PML's 32 suits cosines in [-1, 1]; 1 / tau)."""

    def __init__(self, **kwargs):
        super().__init__(num_classes=1, embedding_size=1, **kwargs)
        del self.proxies  # the entity table is the proxies

    def cast_types(self, dtype, device):
        pass

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if ref_emb is embeddings or ref_labels is not None:
            raise ValueError("EntityProxyAnchor needs the proxies as ref_emb, and labels that "
                             "are their rows (no ref_labels)")
        self.proxies, self.num_classes = ref_emb, len(ref_emb)
        try:  # PML's own computation, which reads self.proxies and takes no ref_emb
            return super().compute_loss(embeddings, labels, indices_tuple, embeddings, labels)
        finally:
            del self.proxies


#: the PML ablations this module builds (each registered in :mod:`hiergeo.losses.levels`)
ABLATIONS = ("proxy_anchor", "contrastive")


def ablation(function: str, space, tau: float, margin: float | None = None):
    """The loss of one level for ``loss.function`` (not ``geo``): a callable ``(z [B, D],
    labels [B], points [U, D]) -> scalar``, ``labels`` the rows of ``points`` (the level's
    reference entities). ``tau`` is the level's temperature (``proxy_anchor``'s
    ``alpha = 1 / tau``; ``contrastive`` has none); ``margin`` in distance units, None for
    the loss class's ``default_margin`` (:mod:`hiergeo.losses.levels`: PML's own defaults).
    On a GPU it refuses, naming the sizes, a level whose :data:`PEAK_BYTES_PER_PAIR` would
    pass half the device's free memory
    (:func:`~hiergeo.losses.contrastive.cuda_budget`, as the geo loss's blocks); under DDP
    that can happen on one rank mid-run, since the union differs per rank. Labels outside
    ``[0, U)`` are refused (PML's pair losses would drop them without a word).

    The value always depends on every point (adding ``0 x`` their sum), so that a level whose
    miner keeps no pair still reaches the entity table: DDP waits for every parameter."""
    if function not in ABLATIONS:
        raise ValueError(f"no PML ablation {function!r}; one of {', '.join(ABLATIONS)}")
    margin = LOSS_CLASSES[function].default_margin if margin is None else float(margin)
    if function == "proxy_anchor":
        fn = EntityProxyAnchor(margin=margin, alpha=1.0 / tau,
                               distance=SpaceDistance(space, similarity=True))

        def loss(z, labels, points):
            return fn(z, labels, ref_emb=points)
    else:
        distance = SpaceDistance(space)
        fn = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=distance)
        miner = pml_miners.MultiSimilarityMiner(distance=distance)

        def loss(z, labels, points):
            ref_labels = torch.arange(len(points), device=labels.device)
            pairs = miner(z, labels, points, ref_labels)
            return fn(z, labels, pairs, ref_emb=points, ref_labels=ref_labels)

    def checked(z, labels, points):
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(points)):
            raise ValueError(f"labels must be rows of the {len(points)} reference points, "
                             f"got {int(labels.min())} .. {int(labels.max())}")
        _check_memory(function, len(z), len(points), z.device)
        return loss(z, labels, points) + 0.0 * points.sum()
    return checked


def _check_memory(function: str, batch: int, refs: int, device: torch.device) -> None:
    if device.type != "cuda":
        return
    need = PEAK_BYTES_PER_PAIR[function] * batch * refs
    budget = cuda_budget(device)
    if need > budget:
        raise MemoryError(
            f"loss.function={function} scores {batch} queries against {refs} entities at "
            f"once: about {need / 2**30:.1f} GiB, and a loss may take {budget / 2**30:.1f} "
            "GiB (half the free memory). Use a "
            "smaller optim.batch_size, loss.scope=siblings, or the shipped loss (geo), which "
            "streams the table")
