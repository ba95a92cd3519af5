"""Prediction: hierarchical beam descent, and flat search over all entities for comparison."""

from .descent import Prediction, descend, flat_search, predict

__all__ = ["Prediction", "descend", "flat_search", "predict"]
