"""``python -m hiergeo.score``: the command lives in :mod:`hiergeo.cli.score`."""

import sys

from ..cli.score import main

sys.exit(main())
