"""Files written whole or not at all: temporary names beside the target, then a rename.

The one home of the package's atomic writes (stores, runs, model folders, predictions).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write_text", "temporary_names"]


@contextmanager
def temporary_names(*paths: Path) -> Iterator[list[Path]]:
    """Temporary names beside ``paths``, unique to this process and call, removed on exit.

    The caller writes each temporary file and renames it onto its path (``tmp.replace(path)``);
    whatever is not renamed when the block ends, normally or by an exception, is deleted.
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmps = [Path(p).with_name(f"{Path(p).name}.{token}.tmp") for p in paths]
    try:
        yield tmps
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, safe against concurrent writers."""
    with temporary_names(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
