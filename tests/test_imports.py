"""The package's modules import each other without cycles (scripts/check_imports.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports",
                                                  ROOT / "scripts" / "check_imports.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycles():
    ck = _checker()
    edges = ck.graph(ck.modules())
    assert edges["hiergeo.evaluate"] and "hiergeo.model.build" in edges["hiergeo.evaluate"]
    assert ck.cycles(edges) == []


def test_the_checker_finds_a_cycle_through_a_function_local_import(tmp_path):
    ck = _checker()
    pkg = tmp_path / "hiergeo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    (tmp_path / "gazetteer").mkdir()
    (tmp_path / "gazetteer" / "__init__.py").write_text("")
    assert ck.cycles(ck.graph(ck.modules(tmp_path))) == [["hiergeo.a", "hiergeo.b"]]
