"""What every command shares: logging to stderr in one format, the library's docs as help."""

from __future__ import annotations

import importlib
import logging


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def library_doc(module: str) -> str:
    """The docstring of ``hiergeo.<module>``: a command's ``--help`` shows its library's
    description, written once."""
    return importlib.import_module(f"hiergeo.{module}").__doc__ or ""
