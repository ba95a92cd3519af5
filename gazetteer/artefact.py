"""The built gazetteer on disk: a folder of Parquet files plus ``meta.json``.

::

    entities.parquet   the entity table (see ``tree.ENTITY_COLUMNS``)
    places.parquet     lat, lon, city_id: the points labelling searches, in source order
    polygons.parquet   entity_id, wkb: country and region shapes
    meta.json          format version, sources with versions and SHA-256, counts, coverage,
                       and the SHA-256 of each file above

Nothing here is pickled, so an artefact from a stranger is data, not a program. Writes go to a
temporary folder that is renamed into place, so a crash never leaves a half-written artefact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from .errors import ArtefactError
from .sources import file_sha256

#: 3: a town called "None" keeps its name in its key; 4: prediction points (point_lat/lon).
FORMAT_VERSION = 4
FILES = ("entities.parquet", "places.parquet", "polygons.parquet")


def default_cache_dir() -> Path:
    """``$HIERGEO_CACHE``, else ``$XDG_CACHE_HOME/hiergeo``, else ``~/.cache/hiergeo``."""
    if os.environ.get("HIERGEO_CACHE"):
        return Path(os.environ["HIERGEO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hiergeo"


def write(out: Path, entities: pd.DataFrame, places: pd.DataFrame,
          polygons: dict[int, object], meta: dict) -> None:
    """Write an artefact; ``places`` holds ``lat, lon, city_id``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        entities.to_parquet(tmp / "entities.parquet", index=False, compression="zstd")
        places[["lat", "lon", "city_id"]].to_parquet(tmp / "places.parquet", index=False,
                                                     compression="zstd")
        ids = np.array(sorted(polygons), dtype=np.int64)
        wkb = shapely.to_wkb([polygons[i] for i in ids]) if len(ids) else []
        pq.write_table(pa.table({"entity_id": ids, "wkb": pa.array(list(wkb), pa.binary())}),
                       tmp / "polygons.parquet", compression="zstd")
        meta = dict(meta, format_version=FORMAT_VERSION,
                    files={f: file_sha256(tmp / f) for f in FILES})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        # another process put a fresh artefact there first: keep theirs
        if not out.exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: no readable meta.json ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(f"{path}: format version {meta.get('format_version')}, "
                            f"this gazetteer reads {FORMAT_VERSION}; rebuild it")
    return meta


def read(path: Path, verify: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """Read an artefact: ``(entities, places, polygons, meta)``; checksums verified."""
    path = Path(path)
    meta = read_meta(path)
    if verify:
        for f in FILES:
            if not (path / f).exists():
                raise ArtefactError(f"{path}: {f} is missing")
            if file_sha256(path / f) != meta["files"][f]:
                raise ArtefactError(f"{path}: {f} does not match its checksum; rebuild it")
    entities = pd.read_parquet(path / "entities.parquet")
    places = pd.read_parquet(path / "places.parquet")
    table = pq.read_table(path / "polygons.parquet")
    ids = table["entity_id"].to_numpy()
    geoms = shapely.from_wkb(table["wkb"].to_numpy(zero_copy_only=False))
    polygons = dict(zip(ids.tolist(), geoms, strict=True))
    return entities, places, polygons, meta
