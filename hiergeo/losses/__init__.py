"""Losses: the training objective (:class:`Objective`, one registered :class:`LevelLoss` per
level plus the parent term), the geo-weighted hyperbolic contrastive loss and its candidates;
PML ablations in :mod:`hiergeo.losses.ablations` (imported on demand: it loads
pytorch-metric-learning)."""

from . import levels  # noqa: F401, I001  (registers the shipped loss functions)
from .contrastive import (
    WEIGHT_FORMS,
    GeoWeightedContrastive,
    haversine_km_torch,
    parent_hinge,
)
from .objective import (
    LOSS_CLASSES,
    LevelLoss,
    LevelQueries,
    LevelSetup,
    Objective,
    register_loss,
)

__all__ = ["LOSS_CLASSES", "WEIGHT_FORMS", "GeoWeightedContrastive",
           "LevelLoss", "LevelQueries", "LevelSetup", "Objective", "haversine_km_torch",
           "parent_hinge", "register_loss"]
