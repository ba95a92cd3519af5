"""Score any geolocation model's predictions OSV-5M's way, and compare models.

::

    python -m hiergeo.score PREDICTIONS... --truth TABLE [--out score/] [--name NAME ...]
        [--units auto|degrees|radians] [--samples first|medoid] [--allow-unmatched]
        [--resamples 1000] [--seed 0] [--geocoder gazetteer|reverse_geocoder] [--json]

PREDICTIONS are CSV, Parquet or GeoJSON tables of predicted coordinates from any model
(GeoCLIP's top-k, PLONK's samples, OSV-5M's baseline script, a commercial API, hiergeo's own
``predictions.csv``): columns are guessed from common spellings or named
(``--id-column``, ``--lat-column``, ``--lon-column``); see :mod:`hiergeo.score.read` for the
layouts. TABLE is the truth: ids and coordinates, with OSV-5M's label columns when it has them
(else the labels of its coordinates, from the gazetteer's ``osv5m`` mode, as OSV-5M labelled
its images). Rows are joined by id; ids that do not match are refused with counts and
examples (``--allow-unmatched`` scores the rows every model answered and lists the rest).

Writes into ``--out`` (default ``score/``), per model ``<name>/``: ``metrics.json``
(OSV-5M's metrics, value for value as :mod:`hiergeo.metrics` and ``hiergeo.evaluate`` compute
them, plus calibration per level when the file has probabilities), ``per_country.csv/.md``,
``error_map.png`` and ``reliability.png``; with two models or more: ``comparison.csv/.md``
(every metric per model, overall and per true country, each difference from the first model
with a paired bootstrap 95% interval), ``difference_map.png`` and ``compare.html`` (one
offline page: the figures, a map of where one model beats the other, the country table);
``summary.json`` (everything above), ``unmatched.csv`` (rows left out, if any).

Python::

    from hiergeo import score
    res = score.score_files(["geoclip.csv", "plonk.parquet"], "test.csv", out="score/")
    res["models"]["geoclip"]["summary"]["geoscore"]
"""

from .compare import compare
from .read import Predictions, ScoreInputError, join, read_predictions, read_truth
from .run import score_files
from .scoring import Scored, score, truth_with_keys

__all__ = ["Predictions", "ScoreInputError", "Scored", "compare", "join", "read_predictions",
           "read_truth", "score", "score_files", "truth_with_keys"]
