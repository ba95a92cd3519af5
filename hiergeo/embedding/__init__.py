"""The gazetteer's tree in the Poincaré ball (``python -m hiergeo.embedding`` from the command
line).

>>> from hiergeo.embedding import embed_tree, evaluate_embedding
>>> emb = embed_tree(gz, dim=16, c=1.0, method="construct")   # or method="optimize"
>>> emb.points            # float64 [n_entities, dim], row i = entity id i
>>> evaluate_embedding(emb, gz)
"""

from .api import Embedding, cached_embed_tree, embed_tree, load_embedding
from .quality import evaluate_embedding

__all__ = ["Embedding", "cached_embed_tree", "embed_tree", "evaluate_embedding", "load_embedding"]
