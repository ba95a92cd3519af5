"""hiergeo: hierarchical visual geolocation in the Poincaré ball.

The geography lives in the sibling package :mod:`gazetteer` (no torch); this package holds the
learning side: tree embedding, model, losses, training, prediction, metrics and reports.
"""

from .version import __version__

__all__ = ["Geolocator", "__version__"]


def __getattr__(name: str):
    # imported on first use: ``import hiergeo`` stays light (no torch until a model is needed)
    if name == "Geolocator":
        from .geolocate import Geolocator

        return Geolocator
    raise AttributeError(f"module 'hiergeo' has no attribute {name!r}")
