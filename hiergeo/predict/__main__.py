"""``python -m hiergeo.predict``: geolocate photos with a trained model (see
:mod:`hiergeo.geolocate`, where the command lives; this package holds the descent it uses)."""

import sys

from ..geolocate import main

sys.exit(main())
