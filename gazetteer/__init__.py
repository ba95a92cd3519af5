"""gazetteer: the world as an entity tree country -> region -> subregion -> city, with OSV-5M's
keys, and a labeller for any (lat, lon). Imports without torch.

>>> import gazetteer
>>> gz = gazetteer.load()                    # built and cached on first call
>>> gz.label([48.8566], [2.3522])            # doctest: +SKIP
"""

from .artefact import default_cache_dir
from .boundaries import BoundarySource
from .core import Gazetteer, build, load
from .errors import ArtefactError, InputError
from .keys import LEVELS, OSV5M_KEY_COLUMNS, OSV5M_PART_COLUMNS, make_keys
from .labeller import MODES

__all__ = [
    "ArtefactError", "BoundarySource", "Gazetteer", "InputError", "LEVELS", "MODES",
    "OSV5M_KEY_COLUMNS", "OSV5M_PART_COLUMNS", "build", "default_cache_dir", "load",
    "make_keys",
]
