"""``python -m hiergeo.features``: a folder of photos -> a feature store.

    python -m hiergeo.features --data DATA --out STORE [--backbone efficientnet_lite0-embedded]
        [--weights PATH | --allow-download | --random-weights] [--batch-size 64] [--workers N]
        [--threads N] [--shard-size 10000] [--dtype float16] [--device auto] [--layout auto]
        [--decode auto] [--allow-missing]

DATA is an OSV-5M CSV (images in ``--image-dir``, default the CSV's folder: ``{id}.jpg``
files, or the ``*.zip`` files OSV-5M publishes, read as they are), a table with
``path, latitude, longitude``, or a folder of photos with EXIF GPS. Rerunning with the same
arguments skips finished shards; a kill loses at most the shard in flight. A rerun whose
photos come from elsewhere (another ``--image-dir``, a zip added, removed or of another size)
is refused: its finished shards would be kept, holding the old photos' features and skips.
Every input row that gives no feature is listed in ``STORE/skipped.csv`` with its reason.

Several processes
-----------------
Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``),
rank r extracts the shards k with ``k % WORLD_SIZE == r``, on ``cuda:LOCAL_RANK`` when
``--device`` is ``auto`` or ``cuda`` and CUDA is there. Each process takes its share of the
node's CPUs (CPUs / processes on the node) for torch threads and DataLoader workers (on a GPU
3/4 of its share, on a CPU up to 4: :func:`hiergeo.devices.loader_workers`), unless
``--threads`` / ``--workers`` say otherwise; torchrun sets ``OMP_NUM_THREADS=1`` when it is
unset, so under torchrun a 1 there counts as unset (pass ``--threads 1`` to mean it).

::

    # one machine: 4 GPUs, or 4 CPU processes sharing its cores
    torchrun --standalone --nproc_per_node 4 -m hiergeo.features --data DATA --out STORE

    # two machines, 8 GPUs each: run on both; HOST is the first one
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        --rdzv_id features -m hiergeo.features --data DATA --out STORE

    # the same with a static rendezvous (NODE is 0 on HOST, 1 on the other)
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank NODE --master_addr HOST \\
        --master_port 29500 -m hiergeo.features --data DATA --out STORE

The ranks never talk to each other (no process group, so no collective that times out while a
slower rank still extracts): each writes its shards, the rank that then finds every shard
done joins them into the index (:func:`hiergeo.data.store.finalize` is idempotent, so two
ranks finishing together is harmless), and a rank done early exits saying which shards remain
with the others. Every node must see DATA unchanged and STORE on a shared filesystem;
``store.json`` records a digest of the ids, and a rank that reads other rows stops.

With ``--rdzv_backend c10d`` the torchrun on HOST holds the rendezvous: when HOST's ranks
finish more than 5 minutes (torchrun's exit barrier) before the others, HOST's torchrun exits
and the others stop their ranks. Only the shards in flight are lost: run the same command again
to finish. The static rendezvous has no such tie. If a rank stops before the index is
written, rerunning (with any number of processes) skips every finished shard and writes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gazetteer.sources import file_sha256

from .data.images import ImageRows, collate_images
from .data.store import (
    FORMAT,
    finalize,
    shard_done,
    shard_paths,
    write_shard,
)
from .data.zips import ZIP_COLUMNS, ImageSources
from .devices import loader_workers, resolve_device
from .files import atomic_write_text
from .model.backbones import EMBEDDED, create_backbone

log = logging.getLogger(__name__)

#: Where ``decode="auto"`` decodes JPEGs on a GPU machine. On one H200 with 16 CPUs,
#: ViT-L/14 extraction at bf16 ran at 1,024 images/s end to end decoding in 12 workers and
#: 783 with nvJPEG (torchvision's batched decode reads each JPEG's entropy-coded data on the
#: CPU, in the main process), with the same features (cosine >= 0.99998):
#: scripts/gpu_check.py, results/benchmarks/gpu.md.
AUTO_DECODE = "cpu"


def _ranges(ks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (shard lists in messages stay short)."""
    parts, i = [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        parts.append(str(ks[i]) if i == j else f"{ks[i]}-{ks[j]}")
        i = j + 1
    return ", ".join(parts) or "none"


def _ids_digest(records: pd.DataFrame) -> str:
    """sha256 of the ids in order: ranks (and reruns) must all read the same rows."""
    return hashlib.sha256("\n".join(records["id"].astype(str)).encode()).hexdigest()


def _check_shard_ids(out: Path, records: pd.DataFrame, shard_size: int, n_shards: int) -> None:
    """Before the index is written: every shard holds (as rows or as skipped) exactly the
    ids of its input rows here. Ranks that started together each wrote ``store.json``, so
    its digest cannot tell whether one of them read another table; this can."""
    import pyarrow.parquet as pq

    ids = records["id"].astype(str).to_numpy()
    for k in range(n_shards):
        p = shard_paths(out, k)
        got = np.concatenate([pq.read_table(p[f], columns=["id"]).column("id").to_numpy(
            zero_copy_only=False).astype(str) for f in ("index", "skipped")])
        want = ids[k * shard_size:(k + 1) * shard_size]
        if len(got) != len(want) or not np.array_equal(np.sort(got), np.sort(want)):
            raise ValueError(f"{out}: shard {k} holds other rows than this table's rows "
                             f"{k * shard_size}-{k * shard_size + len(want) - 1} (did the "
                             "processes read different tables?); delete the store and "
                             "extract again")


def _weights_pin(weights: str) -> dict:
    """For a backbone read from a local file: its absolute path and sha256, which an
    exported model checks before it trusts that backbone (:mod:`hiergeo.export`)."""
    path = Path(str(weights))
    if not path.is_file():
        return {}
    return {"weights_path": str(path.resolve()), "weights_sha256": file_sha256(path)}


def image_source(records: pd.DataFrame) -> dict:
    """Where ``records``' photos come from, cheaply: what :func:`hiergeo.data.read_osv5m`
    put in ``attrs["image_source"]`` (the resolved image folder, and each zip's name and size
    with the count of ids in none), else a sha256 of the ``path`` column (a table, a folder
    of photos). No photo is read or stat'ed."""
    src = records.attrs.get("image_source")
    if src:
        return dict(src)
    return {"paths_sha256": hashlib.sha256(
        "\n".join(records["path"].astype(str)).encode()).hexdigest()}


def _source_changes(old: dict, new: dict) -> list[str]:
    """What differs between two :func:`image_source` records, in words."""
    if old == new:
        return []
    changes = []
    if old.get("image_dir") != new.get("image_dir"):
        changes.append(f"image folder {old.get('image_dir')} -> {new.get('image_dir')}")
    oz, nz = old.get("zips") or {}, new.get("zips") or {}
    for name in sorted(set(oz) | set(nz)):
        if name not in nz:
            changes.append(f"{name} gone")
        elif name not in oz:
            changes.append(f"{name} added")
        elif oz[name] != nz[name]:
            changes.append(f"{name} {oz[name]:,} -> {nz[name]:,} bytes")
    if old.get("not_in_zips") != new.get("not_in_zips") and not changes:
        changes.append(f"ids in no zip {old.get('not_in_zips')} -> {new.get('not_in_zips')} "
                       "(loose {id}.jpg files added or removed)")
    if not changes:
        changes.append("the photos' paths")
    return changes


def _write_meta(out: Path, meta: dict) -> None:
    """Check ``store.json`` against ``meta`` when a store is there, then (re)write it."""
    meta_path = out / "store.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        fixed = ("backbone", "weights", "dim", "dtype", "shard_size", "n_records", "data_config")
        diff = [k for k in fixed if old.get(k) != meta[k]]
        # stores written before the digest existed have none to compare
        if old.get("ids_sha256", meta["ids_sha256"]) != meta["ids_sha256"]:
            diff.append("ids_sha256")
        if diff:
            raise ValueError(f"{out} holds a store made with other settings or rows ({diff}); "
                             f"choose another --out or delete it")
        # stores written before the image source was recorded have none to compare
        changed = _source_changes(old["images"], meta["images"]) if "images" in old else []
        if changed:
            what = "; ".join(changed[:4]) + (f" (+{len(changed) - 4} more)"
                                             if len(changed) > 4 else "")
            raise ValueError(f"{out} was extracted from other photos ({what}): its finished "
                             "shards would be kept as they are; choose another --out or "
                             "delete it to extract these, or give the photos it was made from")
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


#: Images the backbone takes at a time on a CPU, whatever the loader's batch: a convnet's
#: activations for a few images stay in the caches, and the embedded backbone ran 1.8 to 2.7
#: times faster on 4 images at a time than on 64 on a 2-core machine (results/benchmarks/
#: README.md). The loader's batch size still sets how much is decoded ahead.
CPU_MICRO_BATCH = 4


def _encode_in_chunks(encode, x: torch.Tensor, chunk: int) -> torch.Tensor:
    if len(x) <= chunk:
        return encode(x)
    return torch.cat([encode(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def backbone_batches(loader, encode, dev: torch.device, prepare=None):
    """Run ``encode`` (a backbone's ``features``) on each batch ``(images or None, rows,
    skipped, ...)`` of ``loader``: the images moved to ``dev`` in channels_last (faster
    convolutions for convnets such as the embedded one; harmless for ViTs), in inference
    mode, in bf16 autocast on a GPU, :data:`CPU_MICRO_BATCH` images at a time on a CPU;
    ``prepare`` (a ``Preprocess.normalize``) first turns uint8 batches into the model's input
    there. Yields ``(features float32 or None, batch, seconds waiting for the batch, seconds
    encoding it)``; the caller's own code runs outside those modes."""
    cuda = dev.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
                else torch.autocast("cpu", enabled=False))
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        waited, f = time.perf_counter() - t, None
        t = time.perf_counter()
        if batch[0] is not None:
            x = batch[0].to(dev, non_blocking=True, memory_format=torch.channels_last)
            if prepare is not None:
                x = prepare(x)
            with torch.inference_mode(), autocast:
                f = (encode(x) if cuda else _encode_in_chunks(encode, x, CPU_MICRO_BATCH)).float()
            if cuda:
                torch.cuda.synchronize(dev)
        yield f, batch, waited, time.perf_counter() - t


def _loader(paths: np.ndarray, transform, rows, valid, dev: torch.device, *, batch_size: int,
            workers: int, decode: str):
    """Batches ``(images or None, rows, skipped)`` of ``paths[rows]``: decoded and
    preprocessed by ``workers`` processes (``decode="cpu"``), or read by them and decoded on
    the GPU (``"gpu"``: :mod:`hiergeo.data.gpu_jpeg`; the images are then on ``dev``)."""
    if decode == "gpu":
        from .data.gpu_jpeg import GpuJpegDecoder, JpegRows, collate_jpeg

        decoder = GpuJpegDecoder(transform, dev, paths)
        loader = DataLoader(JpegRows(paths, transform, rows, valid), batch_size=batch_size,
                            num_workers=workers, collate_fn=collate_jpeg, pin_memory=True)
        return map(decoder, loader)
    return DataLoader(ImageRows(paths, transform, rows, valid), batch_size=batch_size,
                      num_workers=workers, collate_fn=collate_images,
                      pin_memory=dev.type == "cuda")


def resolve_decode(decode: str, dev: torch.device, transform) -> str:
    """``cpu`` or ``gpu`` for a ``decode`` choice (``auto``, ``cpu``, ``gpu``) on ``dev``:
    ``auto`` is :data:`AUTO_DECODE` on a GPU whose transform the GPU path can do, else
    ``cpu``. Raises ValueError for ``gpu`` where it cannot run."""
    from .data.gpu_jpeg import GpuJpegDecoder

    if decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode={decode!r}: use auto, cpu or gpu")
    possible = dev.type == "cuda" and GpuJpegDecoder.supports(transform)
    if decode == "gpu" and not possible:
        raise ValueError("decode=gpu needs a CUDA device and a backbone whose transform is "
                         "resize, centre crop, normalise (timm's eval transform); use "
                         "decode=cpu")
    if decode == "auto":
        return AUTO_DECODE if possible else "cpu"
    return decode


def _shard(records: pd.DataFrame, rows: np.ndarray, backbone, transform, dev: torch.device, *,
           batch_size: int, workers: int, out_dtype: torch.dtype, bar,
           decode: str = "cpu") -> tuple:
    """Features of ``records`` rows ``rows``: (features, index table, skipped table)."""
    valid = np.isfinite(records["latitude"].to_numpy(float)) & np.isfinite(
        records["longitude"].to_numpy(float))
    # paths, or the members of the zips the table was read from (hiergeo.data.zips)
    loader = _loader(ImageSources(records), transform, rows, valid, dev,
                     batch_size=batch_size, workers=workers, decode=decode)
    feats, kept, skipped = [], [], []
    for f, (_, idx, bad), _, _ in backbone_batches(loader, backbone.features, dev,
                                                   transform.normalize):
        skipped.extend(bad)
        if f is not None:
            feats.append(f.cpu().to(out_dtype))
            kept.append(idx)
        bar.update(len(idx) + len(bad))
    kept_rows = torch.cat(kept).numpy() if kept else np.zeros(0, dtype=np.int64)
    features = torch.cat(feats) if feats else torch.zeros(0, backbone.dim, dtype=out_dtype)
    label_cols = [c for c in records.columns if c != "path" and c not in ZIP_COLUMNS]
    index = records.iloc[kept_rows][label_cols].reset_index(drop=True)
    bad_rows = [r for r, _ in skipped]
    skip = pd.DataFrame({"id": records["id"].to_numpy()[bad_rows],
                         "path": records["path"].to_numpy()[bad_rows],
                         "reason": [w for _, w in skipped]}, columns=["id", "path", "reason"])
    return features, index, skip


def extract(records: pd.DataFrame, out: str | Path, *, backbone=None, batch_size: int = 64,
            workers: int | None = None, shard_size: int = 10_000, dtype: str = "float16",
            device: str = "auto", source: dict | None = None, progress: bool = True,
            rank: int = 0, world: int = 1, decode: str = "auto") -> dict:
    """Write features of ``records`` (from :func:`hiergeo.data.read_records`) to ``out``.

    JPEGs are decoded at the size the backbone's resize needs (1/2, 1/4 or 1/8 of the file's
    when that is enough: :func:`hiergeo.data.images.load_image`); ``decode`` says where:
    ``cpu`` (DataLoader workers), ``gpu`` (nvJPEG: :mod:`hiergeo.data.gpu_jpeg`) or ``auto``
    (:func:`resolve_decode`).

    With ``world > 1`` this call extracts only the shards ``k % world == rank``; other
    processes (same arguments, other ranks) do the rest, and whichever finds every shard done
    writes the index.

    Returns:
        When every shard is done: the report written to ``report.json`` plus
        ``finalized: True`` and ``shards_written`` (the shards this call extracted).
        Otherwise ``finalized: False``, ``shards_written`` and ``shards_remaining``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world {world}: need 0 <= rank < world")
    out = Path(out)
    backbone = backbone or create_backbone(EMBEDDED)
    dev = resolve_device(device)
    workers = loader_workers(dev) if workers is None else workers
    _write_meta(out, {
        "format": FORMAT, "backbone": backbone.name, "weights": backbone.weights,
        **_weights_pin(backbone.weights),
        "dim": backbone.dim, "dtype": dtype,
        "data_config": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in backbone.data_config.items()},
        "shard_size": shard_size, "n_records": len(records), "ids_sha256": _ids_digest(records),
        "images": image_source(records), "source": source or {}})

    # channels_last: faster convolutions for convnets such as the embedded one; harmless
    # for ViTs
    backbone.model.to(dev, memory_format=torch.channels_last).eval()
    decode = resolve_decode(decode, dev, backbone.transform())
    # the CPU path hands uint8 crops over, normalised on the device (Preprocess.uint8)
    transform = backbone.transform(uint8=decode == "cpu")
    n_shards = max(1, -(-len(records) // shard_size))
    who = f"rank {rank} of {world}: " if world > 1 else ""
    if rank == 0 and n_shards < world:
        log.warning("%s%d shards for %d processes: ranks %d and up have nothing to do "
                    "(a smaller --shard-size spreads the work)", who, n_shards, world, n_shards)
    mine = [k for k in range(n_shards) if k % world == rank]
    todo = [k for k in mine if not shard_done(out, k)]
    if len(todo) < len(mine):
        log.info("%s%s: %d of %d shards already done, resuming", who, out,
                 len(mine) - len(todo), len(mine))
    total_rows = sum(min(shard_size, len(records) - k * shard_size) for k in todo)
    bar = tqdm(total=total_rows, unit="img", disable=not progress,
               desc="features" if world == 1 else f"features rank {rank}")
    t0 = time.perf_counter()
    for k in todo:
        rows = np.arange(k * shard_size, min((k + 1) * shard_size, len(records)))
        write_shard(out, k, *_shard(records, rows, backbone, transform, dev,
                                    batch_size=batch_size, workers=workers,
                                    out_dtype=getattr(torch, dtype), bar=bar, decode=decode))
        bar.set_postfix(img_s=f"{bar.n / (time.perf_counter() - t0):.1f}")
    bar.close()

    # Renames are atomic and every rank checks after its own last one, so the rank whose shard
    # completes the set sees every shard done (with NFS-style attribute caching possibly two
    # ranks or none do: finalize is idempotent, and a rerun writes the index).
    left = [k for k in range(n_shards) if not shard_done(out, k)]
    if left:
        log.info("%sshards %s written; shards %s are not done yet: other ranks have them (a "
                 "rank that stopped leaves its shards to a rerun); the last rank to finish "
                 "writes the index", who, _ranges(todo), _ranges(left))
        return {"finalized": False, "shards_written": todo, "shards_remaining": left}
    _check_shard_ids(out, records, shard_size, n_shards)
    report = finalize(out, n_shards)
    log.info("%sshards %s written; all %d shards done, index written", who, _ranges(todo),
             n_shards)
    return {**report, "finalized": True, "shards_written": todo}


if __name__ == "__main__":  # the command lives in hiergeo.cli
    from hiergeo.cli.features import main

    sys.exit(main())
