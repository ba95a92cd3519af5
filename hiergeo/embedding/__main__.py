"""``python -m hiergeo.embedding``: the command lives in :mod:`hiergeo.cli.embedding`."""

import sys

from ..cli.embedding import main

sys.exit(main())
