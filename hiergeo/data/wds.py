"""WebDataset tar shards read with the standard library (no ``webdataset`` package).

A WebDataset shard is a plain tar whose consecutive members make up samples: a member's
sample key is its path up to the first dot of its last component, the rest is the entry's
name (``train/0001.street_clip.npy`` -> key ``train/0001``, entry ``street_clip.npy``);
this is webdataset's ``tariterators.base_plus_ext`` rule. Members without a dot in their
name, and folders, belong to no sample.

:class:`TarSamples` reads one shard sample by sample (``tarfile`` in ``r:`` mode, one
header at a time: memory stays at one sample whatever the shard's size, and the entries not
wanted, such as the photos, are seeked over rather than read) from any sample boundary, and
tells a
damaged shard from a whole one: data cut short inside a member, or a shard that ends without
tar's end-of-archive marker (two zero blocks; ``tarfile`` itself takes a header cut short
for the end), sets :attr:`TarSamples.damage` instead of raising.
"""

from __future__ import annotations

import glob
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gazetteer import InputError

BLOCK = 512


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> three names (the width of a zero-padded start is kept);
    ``{a,b}`` lists too, nested or several in one pattern."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.groups()
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:  # a literal brace pair
        head, tail = pattern[:m.end()], pattern[m.end():]
        return [head + rest for rest in expand_braces(tail)]
    out = []
    for it in items:
        out.extend(expand_braces(pattern[:m.start()] + it + pattern[m.end():]))
    return out


def expand_shards(specs: list[str]) -> list[Path]:
    """Tar paths from paths, globs (sorted) and brace ranges, in the order given; a name that
    matches no file is an :class:`InputError` naming it."""
    paths: list[Path] = []
    for spec in specs:
        for p in expand_braces(str(spec)):
            hits = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
            if not hits:
                raise InputError(f"{p}: no file matches this pattern")
            for h in hits:
                if not Path(h).is_file():
                    raise InputError(f"{h}: no such file (a WebDataset shard is a .tar file)")
                paths.append(Path(h))
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise InputError(f"{p}: named twice among the shards; give each once")
        seen.add(p.resolve())
    if not paths:
        raise InputError("no WebDataset shards given")
    return paths


def split_name(name: str) -> tuple[str | None, str]:
    """A member's (sample key, entry): webdataset's base_plus_ext rule."""
    folder, _, base = name.rpartition("/")
    if "." not in base:
        return None, ""
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext


@dataclass
class Sample:
    """One sample: its key, its entries (name -> bytes, or None when not read) and where it
    lies in the tar (``start``: its first member's header; ``end``: just after its last
    member, where the next sample starts)."""

    key: str
    entries: dict[str, bytes] = field(default_factory=dict)
    start: int = 0
    end: int = 0


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class TarSamples:
    """Iterate the samples of the tar ``path`` from byte ``start`` (0, or a sample's
    ``end`` from an earlier pass). After iterating, :attr:`damage` says what was wrong with
    the tar (None when whole) and :attr:`partial` names the sample that was being read when
    the damage was met (None when the damage fell between samples); a damaged tar's last
    sample counts as partial, as nothing says it was complete. With ``wanted``, only
    those entries' bytes are read; the others appear with ``None`` (their names still
    say what a sample holds)."""

    def __init__(self, path: str | Path, start: int = 0, wanted: set[str] | None = None):
        self.path, self.start, self.wanted = Path(path), int(start), wanted
        self.damage: str | None = None
        self.partial: str | None = None

    def __iter__(self) -> Iterator[Sample]:
        cur: Sample | None = None
        end = self.start
        with open(self.path, "rb") as f:
            head = f.read(2)
            if self.start == 0 and head == b"\x1f\x8b":
                raise InputError(f"{self.path}: a gzip-compressed tar; decompress it "
                                 "(gunzip) first: only plain tars can be resumed mid-file")
            f.seek(self.start)
            try:
                # "r:" on a seekable file: tarfile seeks past the data of a member not
                # extracted (its offsets are the file's own, whatever the start)
                tf = tarfile.open(fileobj=f, mode="r:")
                while (m := tf.next()) is not None:
                    tf.members.clear()  # tarfile keeps every header it read otherwise
                    if not m.isfile():
                        continue
                    key, entry = split_name(m.name)
                    if key is not None and cur is not None and (
                            key != cur.key or entry in cur.entries):
                        yield cur  # complete: the next sample has begun
                        cur = None
                    if key is not None and cur is None:
                        cur = Sample(key, {}, m.offset)
                    want = key is not None and (self.wanted is None or entry in self.wanted)
                    # an entry not read is seeked over; if the file ends inside it, the
                    # next header's read says so ("unexpected end of data")
                    data = tf.extractfile(m).read() if want else None
                    end = m.offset_data + _padded(m.size)
                    if key is not None:
                        cur.entries[entry], cur.end = data, end
            except (tarfile.TarError, EOFError, OSError) as exc:
                self.damage = f"unreadable after byte {end:,} ({exc})"
            if self.damage is None:
                # tarfile ends quietly at a header cut short: a whole tar has its
                # end-of-archive marker (1,024 zero bytes) after the last member
                f.seek(end)
                tail = f.read(2 * BLOCK)
                if tail != bytes(2 * BLOCK):
                    size = self.path.stat().st_size
                    self.damage = (f"truncated: it ends {size - end:,} bytes after its last "
                                   f"whole member (byte {end:,}) without tar's end-of-archive "
                                   "marker")
        if self.damage is not None:
            self.partial = cur.key if cur is not None else None
        elif cur is not None:
            yield cur
