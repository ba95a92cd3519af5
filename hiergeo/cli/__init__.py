"""The commands: one module per ``python -m hiergeo.<command>``, each with ``build_parser()``
(argparse, nothing loaded) and ``main(argv=None) -> int`` (parse, call the library, print a
summary). The library below never imports argparse or this package; a command module only
parses, calls and reports.

=================  ============================  =========================================
command            module                        library it calls
=================  ============================  =========================================
hiergeo.train      :mod:`hiergeo.cli.train`      :func:`hiergeo.train.run`
hiergeo.features   :mod:`hiergeo.cli.features`   :func:`hiergeo.features.extract`
hiergeo.predict    :mod:`hiergeo.cli.predict`    :class:`hiergeo.geolocate.Geolocator`
hiergeo.export     :mod:`hiergeo.cli.export`     :func:`hiergeo.export.from_run`, ``write``
hiergeo.evaluate   :mod:`hiergeo.cli.evaluate`   :func:`hiergeo.evaluate.evaluate_run`
hiergeo.embedding  :mod:`hiergeo.cli.embedding`  :func:`hiergeo.embedding.run.run`
hiergeo.score      :mod:`hiergeo.cli.score`      :func:`hiergeo.score.score_files`
=================  ============================  =========================================
"""

COMMANDS = ("train", "features", "predict", "export", "evaluate", "embedding", "score")
