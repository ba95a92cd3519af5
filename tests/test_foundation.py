"""The package's entry points and import boundaries."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["gazetteer", "hiergeo.train"])
def test_cli_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: python -m" in r.stdout


def test_gazetteer_imports_and_labels_without_torch(small_places_csv):
    code = (
        "import sys, gazetteer\n"
        f"gz = gazetteer.build({str(small_places_csv)!r}, boundaries=False)\n"
        "assert gz.label([-44.27], [171.13])['city'][0].startswith('Pleasant Point')\n"
        "assert 'torch' not in sys.modules, 'gazetteer pulled in torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
