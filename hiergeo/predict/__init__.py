"""Prediction: hierarchical beam descent, and flat search over all entities for comparison."""

from .descent import MemoryMix, Prediction, Search, descend, flat_search, predict

__all__ = ["MemoryMix", "Prediction", "Search", "descend", "flat_search", "predict"]
