"""Each notebook runs top to bottom in a fresh kernel on the tests' small data."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, params: dict, tmp_path, first: str = "",
             last: str = "") -> nbformat.NotebookNode:
    """Run notebook ``name`` with ``params`` set after its parameters cell; ``first`` and
    ``last``: code run before the notebook's own code and after it."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name}: outputs must be stripped in git (make notebooks)"
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())
                                          + "\n" + first))
    if last:
        nb.cells.append(new_code_cell(last))
    # the kernel imports this checkout's gazetteer and hiergeo, not whichever one the venv's
    # editable install points at (worktrees may share a venv)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(env=_kernel_env())
    return nb


def _kernel_env() -> dict:
    path = os.pathsep.join(p for p in (str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH"))
                           if p)
    return {**os.environ, "PYTHONPATH": path}


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_01_gazetteer(small_places_csv, tmp_path, cache_env):
    nb = _execute("01_gazetteer.ipynb", {"PLACES": str(small_places_csv), "COUNTRY": "NZ"},
                  tmp_path)
    text = _text(nb)
    assert "Pleasant Point" in text or "Canterbury" in text
    assert "placeholders" in text


def test_01_draws_a_country_across_the_antimeridian_in_one_piece(small_places_csv, tmp_path,
                                                                  cache_env):
    """Fiji's places at 179.95 and -179.95 (conftest) are 0.1 degrees apart, not 360."""
    nb = _execute("01_gazetteer.ipynb", {"PLACES": str(small_places_csv), "COUNTRY": "FJ"},
                  tmp_path)
    width = re.search(r"drawn over (\d+)° of longitude", _text(nb))
    assert width and int(width.group(1)) < 20, width


# Before the notebook's code: plt.show notes, for each figure it shows, whether the figure
# or every one of its axes has a legend
LEGEND_PROBE = """
import matplotlib.pyplot as plt
legend_probe = []
def probe_show(*args, show=plt.show, **kwargs):
    for num in plt.get_fignums():
        fig = plt.figure(num)
        legend_probe.append(bool(fig.legends)
                            or all(ax.get_legend() is not None for ax in fig.axes))
    return show(*args, **kwargs)
plt.show = probe_show
"""


def test_02_embeddings(small_places_csv, tmp_path, cache_env):
    nb = _execute("02_embeddings.ipynb", {"PLACES": str(small_places_csv), "DIM": 8}, tmp_path,
                  first=LEGEND_PROBE, last='print("legends per figure:", legend_probe)')
    text = _text(nb)
    assert "MAP" in text
    shown = re.search(r"legends per figure: (\[.*\])", text).group(1)
    assert shown == "[True, True, True]", f"a figure without a legend: {shown}"


def test_03_errors_by_country(smoke_run, tmp_path, cache_env):
    d, res = smoke_run
    assert res["acc_country"] == 1.0       # like the demo: no country is ever wrong
    nb = _execute("03_errors_by_country.ipynb", {"RUN": str(d), "BEAMS": [1, 3]}, tmp_path,
                  last='print("confusion rows:", 0 if confusions is None else len(confusions))\n'
                       'print("beam 1 top1_city:", curve.set_index("beam").loc[1, "top1_city"])')
    text = _text(nb)
    assert "top1_city" in text
    # the confusions fall back to the first level with mistakes instead of an empty table
    assert int(re.search(r"confusion rows: (\d+)", text).group(1)) > 0
    assert "confusions at the region level" in text or "confusions at the subregion" in text
    # the beam curve predicts as the run's evaluation did (with its memory): at the run's own
    # beam width it reproduces metrics.json, and the gap to the model alone is shown
    assert float(re.search(r"beam 1 top1_city: ([\d.]+)", text).group(1)) == \
        pytest.approx(res["top1_city"])
    assert "model alone" in text and "the point, geocoded" in text


def test_04_compare_models(tmp_path, cache_env):
    nb = _execute("04_compare_models.ipynb", {"OUT": str(tmp_path / "cmp"), "N": 120,
                                              "RESAMPLES": 100}, tmp_path)
    text = _text(nb)
    assert "ci_low" in text and "radians detected" in text
    assert (tmp_path / "cmp" / "compare.html").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_use_only_the_public_api(name):
    src = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells)
    assert "._" not in src  # no private attributes or modules


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.py")))
def test_each_notebook_is_its_jupytext_source(name):
    """``notebooks/NAME.py`` (Jupytext percent format: linted, diffable, runnable as a
    script) is the source; ``NAME.ipynb`` must hold the same cells (``make notebooks``)."""
    import jupytext

    src = jupytext.read(NOTEBOOKS / f"{name}.py")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        (c.cell_type, c.source) for c in src.cells], \
        f"notebooks/{name}.ipynb differs from its source {name}.py: run make notebooks"
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["parameters"] in tags


def test_run_notebooks_names_the_failing_cell_and_skips_what_lacks_a_run(scripts, tmp_path,
                                                                      monkeypatch, capsys):
    """``make notebooks-run``: one line per notebook, a failure named by notebook and cell
    (exit 1, the others still run), notebook 03 skipped with what to run when there is no
    training run."""
    from nbformat.v4 import new_markdown_cell, new_notebook

    rn = scripts("run_notebooks")
    folder = tmp_path / "notebooks"
    folder.mkdir()
    cells = [new_markdown_cell("# broken"), new_code_cell("x = 1"),
             new_code_cell("print('before')\n1 / 0")]
    nbformat.write(new_notebook(cells=cells), folder / "01_broken.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("print('fine')")]),
                   folder / "02_fine.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("raise RuntimeError")]),
                   folder / "03_errors_by_country.ipynb")
    monkeypatch.setattr(rn, "NOTEBOOKS", folder)
    out = tmp_path / "out"
    rc = rn.main(["--out", str(out), "--run", str(tmp_path / "no_run"), "--timeout", "60"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert len(lines) == 4, lines
    assert lines[0].startswith("FAIL 01_broken.ipynb") and "cell 3 (code cell 2" in lines[0] \
        and "ZeroDivisionError" in lines[0]
    assert lines[1].startswith("ok   02_fine.ipynb") and " s  -> " in lines[1]
    assert lines[2].startswith("skip 03_errors_by_country.ipynb") and "make demo" in lines[2]
    assert "1 skipped, 1 failed (01_broken.ipynb)" in lines[3]
    executed = nbformat.read(out / "01_broken.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"] == "before\n"   # the partial copy is kept
