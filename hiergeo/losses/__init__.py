"""Losses: the geo-weighted hyperbolic contrastive loss and its parent term."""

from .contrastive import GeoWeightedContrastive, PoincareDistance, haversine_km_torch, parent_hinge

__all__ = ["GeoWeightedContrastive", "PoincareDistance", "haversine_km_torch", "parent_hinge"]
