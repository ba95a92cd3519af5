"""hiergeo: hierarchical visual geolocation in the Poincaré ball.

The geography lives in the sibling package :mod:`gazetteer` (no torch); this package holds the
learning side: tree embedding, model, losses, training, prediction, metrics and reports.
"""

__version__ = "0.1.0"
