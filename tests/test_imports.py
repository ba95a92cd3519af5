"""The package's modules import each other without cycles (scripts/check_imports.py)."""

from __future__ import annotations


def test_no_import_cycles(scripts):
    ck = scripts("check_imports")
    edges = ck.graph(ck.modules())
    assert edges["hiergeo.evaluate"] and "hiergeo.model.build" in edges["hiergeo.evaluate"]
    assert ck.cycles(edges) == []


def test_the_checker_finds_a_cycle_through_a_function_local_import(tmp_path, scripts):
    ck = scripts("check_imports")
    pkg = tmp_path / "hiergeo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    (tmp_path / "gazetteer").mkdir()
    (tmp_path / "gazetteer" / "__init__.py").write_text("")
    assert ck.cycles(ck.graph(ck.modules(tmp_path))) == [["hiergeo.a", "hiergeo.b"]]


def test_the_checker_counts_the_packages_an_import_runs(tmp_path, scripts):
    """Importing pkg.mod runs pkg/__init__ too: a cycle through an __init__ is found (the
    one evaluation had through hiergeo.train's __init__), while lazy exports in a module
    __getattr__ are not edges."""
    ck = scripts("check_imports")
    root = tmp_path / "hiergeo"
    (root / "pkg").mkdir(parents=True)
    (root / "__init__.py").write_text(
        "def __getattr__(name):\n    from .x import X\n    return X\n")
    (root / "x.py").write_text("from hiergeo.pkg.mod import f\nX = 1\n")
    (root / "pkg" / "__init__.py").write_text("from .other import g\n")
    (root / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (root / "pkg" / "other.py").write_text("def g():\n    from hiergeo import x\n    return x\n")
    (tmp_path / "gazetteer").mkdir()
    (tmp_path / "gazetteer" / "__init__.py").write_text("")
    assert ck.cycles(ck.graph(ck.modules(tmp_path))) == [
        ["hiergeo.pkg", "hiergeo.pkg.other", "hiergeo.x"]]


def test_reading_a_runs_config_does_not_load_the_trainer():
    import subprocess
    import sys

    code = ("import sys; import hiergeo.evaluate, hiergeo.config; "
            "print('hiergeo.train.loop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_no_module_imports_from_a_layer_above_its_own(scripts):
    ck = scripts("check_imports")
    edges = ck.graph(ck.modules())
    for m in edges:  # every module has a layer (a new package must be placed in LAYERS)
        ck.layer_of(m)
    assert ck.upward(edges) == []
    # the commands sit on top, the library never reaches them
    assert ck.layer_of("hiergeo.cli.train") == len(ck.LAYERS) - 1
    assert ck.layer_of("hiergeo.train.__main__") == len(ck.LAYERS) - 1
    assert ck.layer_of("hiergeo.losses.contrastive") < ck.layer_of("hiergeo.train.loop")


def test_the_checker_finds_an_upward_import_and_ignores_a_main_guard(tmp_path, scripts):
    ck = scripts("check_imports")
    root = tmp_path / "hiergeo"
    (root / "geometry").mkdir(parents=True)
    (root / "cli").mkdir()
    for d in (root, root / "geometry", root / "cli"):
        (d / "__init__.py").write_text("")
    (root / "cli" / "tool.py").write_text("def main():\n    return 0\n")
    (root / "geometry" / "ok.py").write_text(
        "import sys\n\nif __name__ == '__main__':\n    from hiergeo.cli.tool import main\n"
        "    sys.exit(main())\n")
    (root / "geometry" / "bad.py").write_text("def f():\n    from hiergeo.cli import tool\n")
    (tmp_path / "gazetteer").mkdir()
    (tmp_path / "gazetteer" / "__init__.py").write_text("")
    edges = ck.graph(ck.modules(tmp_path))
    assert ck.upward(edges) == [("hiergeo.geometry.bad", "hiergeo.cli"),
                                ("hiergeo.geometry.bad", "hiergeo.cli.tool")]


def test_no_future_warning_from_geoopt_on_import():
    """geoopt's import-time torch.jit.script is silenced at its one import (issue 27): the
    warning printed on every command before. Fails if any module imports geoopt directly."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error', FutureWarning)\n"
            "from hiergeo.geometry.spaces import make_space\n"
            "for g in ('poincare', 'lorentz', 'sphere'): make_space(g)\n"
            "import hiergeo.train.optim, hiergeo.embedding.optimize, hiergeo.model.geomodel\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def test_geoopt_is_imported_in_one_place():
    """Every import of geoopt goes through geometry.poincare.import_geoopt (which silences its
    import-time warning); a direct import elsewhere would print the warning again when it
    happens to run first."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "hiergeo"
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if re.search(r"^\s*(import geoopt|from geoopt)", p.read_text(), re.M)]
    assert direct == ["geometry/poincare.py"]
