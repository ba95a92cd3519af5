"""``python -m hiergeo.predict``: the command lives in :mod:`hiergeo.cli.predict`."""

import sys

from ..cli.predict import main

sys.exit(main())
