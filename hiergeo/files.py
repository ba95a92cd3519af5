"""Files written whole or not at all: temporary names beside the target, then a rename.

The one home of the package's atomic writes (stores, runs, model folders, predictions).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Busy", "DiskFullError", "atomic_write_text", "clobbered_input", "disk_full",
           "exclusive", "one_line", "temporary_names"]


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


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def clobbered_input(outputs, inputs, folders_read_whole=()) -> str | None:
    """What a command writing ``outputs`` would destroy of what it reads, as a one-line
    reason, or None. An output is refused when it is an input (the same file, through any
    link or spelling) or lies inside one of ``folders_read_whole`` (e.g. a feature store:
    writing into it corrupts it). Checked before any work, so that a prediction never
    replaces its own input table or photo (issue 26)."""
    inputs = [Path(i) for i in inputs]
    whole = [Path(f).resolve() for f in folders_read_whole]
    for out in outputs:
        out = Path(out)
        real = out.resolve()
        for i in inputs:
            if real == i.resolve() or _same(out, i):
                return f"{out} is also an input ({i}): writing it would replace it"
        for f in whole:
            if real == f or f in real.parents:
                return f"{out} lies inside {f}, which this command reads: write it elsewhere"
    return None


class Busy(FileExistsError):
    """Another process holds the lock on what this one was about to write."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created) for the block, or raise
    :class:`Busy` at once, naming ``what`` and the holder (its pid, host and start time are
    written into the file). An OS lock (``flock``): the kernel releases it when the holder
    exits, even killed, so a crashed run never leaves a stale lock. The file stays (an
    empty lock file is harmless; removing it would let a third process lock another inode).
    Where ``flock`` does not exist (Windows) or the file system refuses it (Lustre without
    ``-o flock``), nothing is locked, with a warning; on NFS mounted ``nolock`` the lock holds
    only between processes of one host."""
    import datetime
    import socket

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms hiergeo is tested on
        yield
        return
    import errno
    import logging

    path = Path(path)
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(300).strip() or "a process that did not say who it is"
            raise Busy(f"{what} is in use by another process ({holder}); wait for it to "
                       f"finish, or choose another folder") from None
        except OSError as exc:  # a file system without flock (Lustre without -o flock)
            if exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                raise
            logging.getLogger(__name__).warning(
                "%s: this file system takes no locks (%s): nothing stops a second process "
                "from writing %s at the same time", path, exc.strerror, what)
            yield
            return
        fh.seek(0)
        fh.truncate()
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


class DiskFullError(OSError):
    """A write ran out of disk space; the message says what is kept and what to do."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return self.strerror or super().__str__()


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during: torch's writer wraps
    the OSError in a RuntimeError) is the disk or quota running out."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # safetensors' writer (Rust) reports it in its own error's text
        if "os error 28" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters (pyarrow's and
    pandas' messages run over several lines: an error of hiergeo's is one)."""
    return " ".join(str(exc).split())[:limit]


def output_lock(first_output: Path) -> Path:
    """The lock file a prediction into ``first_output`` holds: ``.NAME.lock`` beside it."""
    first_output = Path(first_output)
    return first_output.with_name(f".{first_output.name}.lock")
