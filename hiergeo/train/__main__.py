"""``python -m hiergeo.train``: the command lives in :mod:`hiergeo.cli.train`."""

import sys

from ..cli.train import main

sys.exit(main())
