"""Losses: the geo-weighted hyperbolic contrastive loss and its parent term; PML ablations in
:mod:`hiergeo.losses.ablations` (imported on demand: it loads pytorch-metric-learning)."""

from .contrastive import (
    WEIGHT_FORMS,
    GeoWeightedContrastive,
    haversine_km_torch,
    parent_hinge,
)

#: The PML ablations (:func:`hiergeo.losses.ablations.ablation`) and each one's ``loss.margin`` when
#: None: PML's own defaults (``ProxyAnchorLoss``'s margin, ``ContrastiveLoss``'s negative
#: margin), in the space's distance units
ABLATION_MARGINS = {"proxy_anchor": 0.1, "contrastive": 1.0}
#: ``loss.function``: the shipped loss (``geo``) and the ablations
FUNCTIONS = ("geo", *ABLATION_MARGINS)

__all__ = ["ABLATION_MARGINS", "FUNCTIONS", "WEIGHT_FORMS", "GeoWeightedContrastive",
           "haversine_km_torch", "parent_hinge"]
