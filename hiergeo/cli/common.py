"""What every command shares: logging to stderr in one format, the library's docs as help,
the ``--beams`` option's parsing, and how a command ends (a few human lines, or ``--json``)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys

from gazetteer.keys import LEVELS

from ..config import ConfigError


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def add_json_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", action="store_true",
                    help="print the figures as JSON on stdout instead of the human summary "
                    "(which then goes to stderr)")


def _plain(o):
    """``json.dumps``'s ``default``: numpy numbers as numbers, anything else (paths) as text."""
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def finish(lines: list[str], figures: dict, as_json: bool) -> None:
    """How a command ends: ``lines`` (what it did, the headline figures, where the files are,
    what to open next) on stdout; with ``--json`` the ``figures`` as JSON on stdout and the
    lines on stderr, so a script reads stdout and a person still sees the summary."""
    if as_json:
        print(json.dumps(figures, indent=2, default=_plain, ensure_ascii=False))
        print("\n".join(lines), file=sys.stderr)
    else:
        print("\n".join(lines))


def store_out_error(out) -> str | None:
    """The one-line error for a feature store's ``--out`` that names a file, else None."""
    if out.exists() and not out.is_dir():
        return (f"error: --out {out} is a file; --out names the store's folder (a new one, "
                "or a store to resume)")
    return None


def skipped_line(report: dict, out, noun: str = "") -> str:
    """The summary line of a store's skipped rows (``report`` as
    :func:`hiergeo.data.store.finalize` writes it): the count, the two commonest reasons, where
    each is listed."""
    top = list(report["skipped_by_reason"].items())[:2]
    why = "; ".join(f"{n}: {r if len(r) <= 60 else r[:57] + '...'}" for r, n in top)
    what = f"{noun} skipped" if noun else "skipped"
    return (f"  {report['skipped']:,} {what} ({why}): {out}/skipped.csv lists each "
            "with its reason")


def pct(v) -> str:
    """0.6213 -> '62.1%'; NaN or None -> 'n/a'."""
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def plain_text(doc: str) -> str:
    """A docstring as a terminal shows it: Sphinx roles (:func:`~a.b.f` -> f), double
    backquotes (``x`` -> x) and literal-block markers (``::``) removed."""
    doc = re.sub(r":[a-z]+:`(~?)([^`]*)`",
                 lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), doc)
    doc = re.sub(r"``(.+?)``", r"\1", doc, flags=re.S)
    doc = re.sub(r"\n[ \t]*::[ \t]*\n\n?", "\n", doc)      # a line holding only ::
    return re.sub(r"::[ \t]*$", ":", doc, flags=re.M)        # "Python::" -> "Python:"


def library_doc(module: str) -> str:
    """The docstring of ``hiergeo.<module>``, as plain text: a command's ``--help`` shows its
    library's description, written once."""
    return plain_text(importlib.import_module(f"hiergeo.{module}").__doc__ or "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default after its help, unless there
    is none to show (None, a flag's False) or the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (action.option_strings and d is not None and d is not False
                and d is not argparse.SUPPRESS and "default" not in text):
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def parse_beams(text: str) -> list[int]:
    """``"5,3,1,1"`` -> ``[5, 3, 1, 1]``; ConfigError (a ValueError) naming the option otherwise."""
    try:
        beams = [int(b) for b in text.split(",")]
    except ValueError:
        beams = []
    if len(beams) != len(LEVELS) or min(beams) < 1:
        raise ConfigError(f"--beams needs {len(LEVELS)} widths >= 1 such as 5,3,1,1, not "
                         f"{text!r}")
    return beams


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (argparse turns the error into one line
    naming the option)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def count_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 0 (e.g. loader workers, 0: in process)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value
