"""Baselines on the same feature stores as the model, scored the same way.

- :class:`KNNRetrieval`: nearest training samples by cosine similarity, like OSV-5M's
  retrieval baseline (top-1 location, or a hierarchical top-k vote);
- :class:`FlatSoftmax`: one cross-entropy classifier per level (linear or MLP head), like
  OSV-5M's classification baseline;
- :class:`ConstantGuess`: one fixed point for every query (the training location with the
  best mean GeoScore): any model must beat it.

Each ``fit(train_split)`` takes a :class:`hiergeo.data.splits.Split` (features, locations and
entity ids, -1 where a level is missing) and ``predict(x)`` returns a
:class:`hiergeo.predict.Prediction` with one path, so ``hiergeo.metrics`` scores every method
the same way. ``python benchmarks/bench_names.py`` runs them all beside the model.
"""

from .constant import ConstantGuess
from .knn import KNNRetrieval
from .softmax import FlatSoftmax

__all__ = ["ConstantGuess", "FlatSoftmax", "KNNRetrieval"]
