"""Pictures written to ``results/<run_id>/``: the error map and the cumulative error curve."""

from .maps import difference_map, error_curve, error_map, reliability_diagram
from .photo_map import write_map

__all__ = ["difference_map", "error_curve", "error_map", "reliability_diagram", "write_map"]
