"""Losses: the geo-weighted hyperbolic contrastive loss and the distances it takes."""

from .contrastive import GeoWeightedContrastive, PoincareDistance

__all__ = ["GeoWeightedContrastive", "PoincareDistance"]
