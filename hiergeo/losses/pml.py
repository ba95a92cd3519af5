"""pytorch-metric-learning losses with the entity table as proxies.

A PML loss compares a batch's embeddings with reference embeddings (``ref_emb``, labelled
``ref_labels``). Here the references are entity points, so the entity table plays the part of
PML's proxies, and each sample's label is the row of its entity among them. Distances are the
space's own (:class:`~hiergeo.geometry.pml.SpaceDistance`), so PML's losses, miners and
reducers measure in the ball.

- :class:`GeoWeightedProxyLoss`: the shipped loss (HierLoc's, computed by
  :class:`~hiergeo.losses.contrastive.GeoWeightedContrastive`, its one home) through PML's
  interface, for people who compose PML losses, miners and reducers.
- :class:`EntityProxyAnchor`: PML's ``ProxyAnchorLoss`` (Kim et al., CVPR 2020) over given
  proxies instead of a table of its own.
- :func:`ablation`: the losses ``loss.function`` selects in the trainer besides the shipped
  ``geo``: ``proxy_anchor`` and ``contrastive`` (PML's ``ContrastiveLoss`` on the pairs PML's
  ``MultiSimilarityMiner`` keeps). Measured against the shipped loss on the names benchmark in
  ``results/benchmarks/names_losses.md``.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import common_functions as c_f

from ..geometry.pml import SpaceDistance
from ..geometry.spaces import Poincare
from .contrastive import GeoWeightedContrastive

#: ``loss.margin`` when None, per PML function: PML's own defaults (``ProxyAnchorLoss``'s
#: margin, ``ContrastiveLoss``'s negative margin), in the space's distance units
DEFAULT_MARGIN = {"proxy_anchor": 0.1, "contrastive": 1.0}


class GeoWeightedProxyLoss(pml_losses.BaseMetricLossFunction):
    """HierLoc's geo-weighted loss as a PML loss whose proxies are entity points.

    ``loss(z [B, D], labels [B], ref_emb=points [N, D], latlon=[B, 2], ref_latlon=[N, 2])``:
    ``labels`` are rows of ``ref_emb`` (each sample's entity), ``latlon`` the samples'
    locations and ``ref_latlon`` the entities' centroids, in degrees. The value is
    :meth:`GeoWeightedContrastive.full`'s, per sample, reduced by the PML reducer (the mean by
    default, as the trainer's). With ``lam = 0`` it is PML's ``NTXentLoss`` in the same space.

    Args:
        tau, sigma_km, lam, form: as :class:`GeoWeightedContrastive`.
        block: entities per block (:meth:`GeoWeightedContrastive.full`); None: all at once.
        distance: a :class:`SpaceDistance` (default: the Poincaré ball, c = 1).
        **kwargs: PML's (``reducer``, ``embedding_regularizer``, ...).
    """

    def __init__(self, tau: float = 0.1, sigma_km: float = 1000.0, lam: float = 1.0,
                 form: str = "paper", block: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.distance, SpaceDistance):
            raise TypeError("GeoWeightedProxyLoss needs a hiergeo SpaceDistance, not "
                            f"{type(self.distance).__name__}")
        self.geo = GeoWeightedContrastive(self.distance.space, tau, sigma_km, lam, form)
        self.block = block
        self._latlon = None

    def get_default_distance(self):
        return SpaceDistance(Poincare())

    def forward(self, embeddings, labels, ref_emb, latlon, ref_latlon, indices_tuple=None):
        if indices_tuple is not None:
            raise ValueError("GeoWeightedProxyLoss weighs every negative itself; it takes no "
                             "miner's indices_tuple")
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
        out = self.geo.full(embeddings, ref_emb, ref_latlon, latlon, labels, block=self.block)
        return {"loss": {"losses": out["per_sample"],
                         "indices": c_f.torch_arange_from_size(embeddings),
                         "reduction_type": "element"}}


class EntityProxyAnchor(pml_losses.ProxyAnchorLoss):
    """PML's ``ProxyAnchorLoss`` whose proxies are passed in: ``loss(z, labels,
    ref_emb=points)``, ``labels`` the rows of ``ref_emb``. PML's class keeps a proxy
    ``Parameter`` of its own and casts it to the batch's dtype; the entity table is trained by
    its own optimiser and stays in float64, so this one holds none and casts nothing. ``alpha``
    scales distances (PML's default 32 suits cosine similarities in [-1, 1]; pass 1 / tau)."""

    def __init__(self, **kwargs):
        super().__init__(num_classes=1, embedding_size=1, **kwargs)
        del self.proxies  # the entity table is the proxies

    def cast_types(self, dtype, device):
        pass

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if ref_emb is embeddings:
            raise ValueError("EntityProxyAnchor needs the proxies as ref_emb")
        self.proxies, self.num_classes = ref_emb, len(ref_emb)
        try:  # PML's own computation, which reads self.proxies and takes no ref_emb
            return super().compute_loss(embeddings, labels, indices_tuple, embeddings, labels)
        finally:
            del self.proxies


def ablation(function: str, space, tau: float, margin: float | None = None):
    """The loss of one level for ``loss.function`` (not ``geo``): a callable ``(z [B, D],
    labels [B], points [U, D]) -> scalar``, ``labels`` the rows of ``points`` (the level's
    reference entities). ``tau`` is the level's temperature (``proxy_anchor``'s
    ``alpha = 1 / tau``; ``contrastive`` has none); ``margin`` in distance units, None for
    :data:`DEFAULT_MARGIN`."""
    if function not in DEFAULT_MARGIN:
        raise ValueError(f"no PML ablation {function!r}; one of {', '.join(DEFAULT_MARGIN)}")
    margin = DEFAULT_MARGIN[function] if margin is None else float(margin)
    distance = SpaceDistance(space)
    if function == "proxy_anchor":
        fn = EntityProxyAnchor(margin=margin, alpha=1.0 / tau, distance=distance)
        return lambda z, labels, points: fn(z, labels, ref_emb=points)
    fn = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=distance)
    miner = pml_miners.MultiSimilarityMiner(distance=distance)

    def contrastive(z, labels, points):
        ref_labels = torch.arange(len(points), device=labels.device)
        pairs = miner(z, labels, points, ref_labels)
        return fn(z, labels, pairs, ref_emb=points, ref_labels=ref_labels)
    return contrastive
