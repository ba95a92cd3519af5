"""Execute the notebooks headless, each in a fresh kernel, and keep what they showed.

    python scripts/run_notebooks.py [NAME ...] [--out results/notebooks] [--run results/demo]

(``make notebooks-run``.) Each ``notebooks/NAME.ipynb`` runs top to bottom from the
``notebooks/`` folder, as in Jupyter; the executed copy, outputs and figures included, is
written to ``OUT/NAME.ipynb``, and to ``OUT/NAME.html`` too where nbconvert is installed (the
``notebooks`` extra) so that a browser alone can read it; files a notebook writes (04's
comparison) go there too. One line per notebook with its time.

A notebook whose input is missing is skipped with one line saying what to run: notebook 03
reads a finished training run (``--run``, default ``results/demo``: ``make demo``). A cell that
fails ends that notebook (its partial copy is still written, with the traceback in the failing
cell) and the script exits 1 after the others, naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: notebooks that read a training run: its folder is passed as their ``RUN`` parameter
NEEDS_RUN = {"03_errors_by_country"}
#: notebooks that write files: their ``OUT`` parameter is pointed into ``--out`` (in Jupyter
#: they write beside themselves, in notebooks/)
WRITES = {"04_compare_models": "compare_demo"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help="notebooks to run (03, 03_errors_by_country or its .ipynb); default all")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "notebooks",
                    help="folder for the executed copies (default results/notebooks)")
    ap.add_argument("--run", type=Path, default=ROOT / "results" / "demo",
                    help="the training run notebook 03 reads (default results/demo)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds one cell may take")
    return ap.parse_args(argv)


def select(names: list[str]) -> list[Path]:
    """The notebooks named (all of ``notebooks/*.ipynb`` when none), checked to exist."""
    everything = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not names:
        return everything
    out = []
    for name in names:
        found = [p for p in everything if p.stem.startswith(Path(name).stem)]
        if len(found) != 1:
            raise SystemExit(f"{'no' if not found else 'more than one'} notebook {name!r} in "
                             "notebooks/; there are: " + ", ".join(p.stem for p in everything))
        out.append(found[0])
    return out


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, as a user would type it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def inject(nb, params: dict) -> None:
    """Set ``params`` in a cell right after the one tagged ``parameters`` (as papermill does)."""
    from nbformat.v4 import new_code_cell

    if not params:
        return
    at = next((i for i, c in enumerate(nb.cells)
               if "parameters" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(at + 1, new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()),
                                          metadata={"tags": ["injected-parameters"]}))


def failed_cell(nb) -> str:
    """``cell N (code cell M): Error: message`` for the first cell with an error output."""
    code = 0
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "code":
            continue
        code += 1
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return (f"cell {i} (code cell {code}, starting {first[:60]!r}): "
                        f"{o.get('ename')}: {str(o.get('evalue', '')).splitlines()[0][:200]}")
    return "a cell (no error output recorded)"


def write(nb, out: Path, stem: str) -> list[Path]:
    """The executed copy as ``.ipynb``, plus ``.html`` where nbconvert is installed; each file
    written under a temporary name, then renamed."""
    import nbformat

    from hiergeo.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.ipynb"]
    atomic_write_text(written[0], nbformat.writes(nb))
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return written
    try:
        html, _ = HTMLExporter().from_notebook_node(nb)
    except Exception as exc:  # noqa: BLE001  an optional copy: a broken nbconvert (its
        # templates missing, say) must not lose the executed notebook or stop the others
        print(f"     no .html for {stem}: nbconvert failed ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:120]})", file=sys.stderr)
        return written
    written.append(out / f"{stem}.html")
    atomic_write_text(written[1], html)
    return written


def kernel_env() -> dict:
    """The environment of each kernel: this checkout first on the import path, so the
    notebooks run against the code beside them even when the venv's editable install points
    at another clone or worktree."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_one(path: Path, args) -> tuple[str, str, list[Path]]:
    """Execute one notebook: ``(status, detail, files written)``, status ``ok``, ``skip`` or
    ``FAIL``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    params = {}
    if path.stem in NEEDS_RUN:
        run = args.run.resolve()
        if not (run / "metrics.json").exists():
            return "skip", (f"needs a finished training run, none in {shown(run)}: run "
                            "`make demo` (it writes results/demo) or pass --run results/<run>"), []
        params["RUN"] = str(run)
    if path.stem in WRITES:
        params["OUT"] = str((args.out / WRITES[path.stem]).resolve())
    nb = nbformat.read(path, as_version=4)
    inject(nb, params)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{path.stem}.kernel.log"     # the kernel's own stderr, not its cells'
    status, detail = "ok", ""
    try:
        with log.open("w", encoding="utf-8") as err:
            client.execute(stderr=err, env=kernel_env())
    except CellTimeoutError:
        status, detail = "FAIL", f"a cell ran past --timeout {args.timeout} s"
    except CellExecutionError:
        status, detail = "FAIL", failed_cell(nb)
    except DeadKernelError:
        status, detail = "FAIL", f"the kernel died (out of memory?): see {shown(log)}"
    if status == "ok":
        log.unlink()                               # only the kernel's start-up chatter
    written = write(nb, args.out, path.stem)
    files = ", ".join(shown(p) for p in written)
    return status, (f"{detail}; partial copy in {files}" if detail else f"-> {files}"), written


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as exc:
        print(f"run_notebooks: {exc.name} is missing: pip install -e '.[notebooks]' "
              "(or make notebooks-run, which installs it)", file=sys.stderr)
        return 2
    if "python3" not in KernelSpecManager().find_kernel_specs():
        print("run_notebooks: no 'python3' Jupyter kernel: pip install ipykernel",
              file=sys.stderr)
        return 2
    paths = select(args.names)
    failed, skipped, html = [], [], False
    for path in paths:
        t0 = time.perf_counter()
        status, detail, written = run_one(path, args)
        html = html or any(p.suffix == ".html" for p in written)
        print(f"{status:<4} {path.name:<30} {time.perf_counter() - t0:6.1f} s  {detail}",
              flush=True)
        if status == "FAIL":
            failed.append(path.name)
        elif status == "skip":
            skipped.append(path.name)
    ran = len(paths) - len(failed) - len(skipped)
    where = shown(args.out)
    if html:
        read = f"open {where}/*.html in a browser, or the .ipynb with `make lab`"
    elif importlib.util.find_spec("nbconvert") is None:
        read = f"open {where}/*.ipynb with `make lab` (pip install nbconvert: .html copies too)"
    else:
        read = f"open {where}/*.ipynb with `make lab`"
    print(f"{len(paths)} notebooks: {ran} ran, {len(skipped)} skipped, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else "") + (f"; {read}" if ran else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
