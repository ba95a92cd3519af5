"""Losses: the geo-weighted hyperbolic contrastive loss and its parent term; PML ablations in
:mod:`hiergeo.losses.pml` (imported on demand: it loads pytorch-metric-learning)."""

from .contrastive import (
    WEIGHT_FORMS,
    GeoWeightedContrastive,
    haversine_km_torch,
    parent_hinge,
)

#: ``loss.function``: the shipped loss (``geo``) and the PML ablations
#: (:func:`hiergeo.losses.pml.ablation`)
FUNCTIONS = ("geo", "proxy_anchor", "contrastive")

__all__ = ["FUNCTIONS", "WEIGHT_FORMS", "GeoWeightedContrastive", "haversine_km_torch",
           "parent_hinge"]
