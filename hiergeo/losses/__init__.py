"""Losses: the geo-weighted hyperbolic contrastive loss and its parent term."""

from .contrastive import (
    WEIGHT_FORMS,
    GeoWeightedContrastive,
    haversine_km_torch,
    parent_hinge,
)

__all__ = ["WEIGHT_FORMS", "GeoWeightedContrastive", "haversine_km_torch", "parent_hinge"]
