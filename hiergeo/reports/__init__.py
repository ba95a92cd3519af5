"""Pictures written to ``results/<run_id>/``: the error map and the cumulative error curve."""

from .maps import error_curve, error_map, reliability_diagram

__all__ = ["error_curve", "error_map", "reliability_diagram"]
