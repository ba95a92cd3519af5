"""Peak memory and time of one forward + backward of the full-candidate level loss.

Also of the PML ablations (``--modes proxy_anchor,contrastive``: :func:`hiergeo.losses.ablations.
ablation`, ``B`` queries against ``N`` reference entities at once), whose peak bytes per
(query, entity) pair are ``PEAK_BYTES_PER_PAIR`` in :mod:`hiergeo.losses.ablations`.

``GeoWeightedContrastive.full`` scores a batch of ``B`` queries against all ``N`` entities of a
level: at once (``oneshot``: about a dozen float64 ``[B, N]`` tensors at the peak) or ``N`` in
blocks (``blocked``: the same value and gradients, ``O(B x block)`` memory). For each batch
size and level size this prints the peak memory beyond the inputs and the seconds of one
forward + backward, and with ``--out`` writes them as JSON.

Usage::

    python benchmarks/bench_loss_memory.py [--batches 256,1024,4096]
        [--sizes 4000,40000,165000] [--cases 4096x165000,...]
        [--modes oneshot,blocked,proxy_anchor,contrastive]
        [--geometry poincare] [--dim 16] [--block K | --budget-mb M | --budgets-gb 2,8,32]
        [--max-gb 12] [--device auto] [--out FILE.json]
    python benchmarks/bench_loss_memory.py --calibrate   # the temporaries behind block_size

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated once the inputs
were built. On a CPU each case runs in a fresh process and reports its peak RSS
(``ru_maxrss``) minus its RSS once the inputs were built, which includes what glibc keeps of
freed memory (about twice the live tensors for small blocks); one-shot cases predicted to need
more than ``--max-gb`` are skipped, not run. The blocked cases use ``block_size(B, N,
device)`` unless ``--block`` or ``--budget-mb`` says otherwise; ``--budgets-gb`` runs the
blocked case once per budget (GiB, as ``hardware.loss_memory_gb`` gives it): the time a smaller
budget costs. "predicted" is ``BLOCK_TEMPS x 8 x B x block`` (blocked) or the calibrated
one-shot count ``x 8 x B x N``.

``--calibrate`` measures, per space, how many float64 ``[B, cols]`` temporaries are alive at
the peak of each path: peak RSS with ``MALLOC_MMAP_THRESHOLD_`` set so that glibc returns every
freed block at once (RSS then follows the live tensors), divided by ``8 x B x cols``. These
numbers are ``BLOCK_TEMPS`` in :mod:`hiergeo.losses.contrastive` and ``ONESHOT_TEMPS`` here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hiergeo.devices import resolve_device
from hiergeo.geometry import expmap0, project
from hiergeo.geometry.spaces import SPACES, make_space
from hiergeo.losses.ablations import PEAK_BYTES_PER_PAIR, ablation
from hiergeo.losses.contrastive import BLOCK_TEMPS, GeoWeightedContrastive, block_size

#: Float64 ``[B, N]`` temporaries at the peak of the one-shot path, per space (``--calibrate``).
ONESHOT_TEMPS = {"poincare": 10, "lorentz": 11, "euclidean": 7, "sphere": 12}
GB = 1e9


def make_inputs(geometry: str, batch: int, n: int, dim: int, device: str, seed: int = 0):
    """A space, queries ``z [B, D]`` and entities ``[N, D]`` (both needing gradients),
    entity centroids, sample locations near their target's centroid, and targets."""
    g = torch.Generator().manual_seed(seed)
    space = make_space(geometry)
    z = space.query(torch.randn(batch, dim, generator=g, dtype=torch.float64))
    ball = project(expmap0(torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.5))
    points = space.init_entities(ball)
    cent = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) * 140 - 60,
                        torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180], -1)
    target = torch.randint(n, (batch,), generator=g)
    latlon = cent[target] + torch.randn(batch, 2, generator=g, dtype=torch.float64) * 0.2
    out = [t.to(device) for t in (z, points, cent, latlon, target)]
    out[0].requires_grad_(True)
    out[1].requires_grad_(True)
    return space, *out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step(loss, z, points, cent, latlon, target, block):
    if isinstance(loss, GeoWeightedContrastive):
        loss.full(z, points, cent, latlon, target, block=block)["loss"].backward()
    else:  # a PML ablation
        loss(z, target, points).backward()


def _loss(space, function: str | None):
    if function is not None:
        return ablation(function, space, tau=0.25)
    return GeoWeightedContrastive(space, tau=0.25, sigma_km=500.0, lam=1.0)


def one_case(geometry: str, batch: int, n: int, dim: int, block: int | None,
             device: str, function: str | None = None) -> dict:
    """Peak bytes beyond the inputs and seconds of one forward + backward, in this process
    (``function``: a PML ablation instead of the geo loss)."""
    warm = make_inputs(geometry, 8, 64, dim, device)
    _step(_loss(warm[0], function), *warm[1:], block=None if block is None else 16)  # kernels
    space, z, points, cent, latlon, target = make_inputs(geometry, batch, n, dim, device)
    loss = _loss(space, function)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    _step(loss, z, points, cent, latlon, target, block)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "seconds": seconds}
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # an unchanged ru_maxrss means the case peaked below what the process had already held
    return {"peak_bytes": peak - base, "seconds": seconds, "below_earlier_peak": peak == before}


def _in_child(spec: dict, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_case(spec: dict, device: str) -> dict:
    if device.startswith("cuda"):
        try:
            return one_case(**spec, device=device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {"error": "out of memory"}
        except MemoryError as e:  # an ablation's own guard (hiergeo.losses.ablations), before any
            return {"error": str(e)}  # allocation: raise --max-gb and measure on free memory
    return _in_child(spec)


def calibrate(batch_oneshot: int = 512, n_oneshot: int = 8192, batch_blocked: int = 1024,
              block: int = 2048) -> list[dict]:
    """Float64 temporaries at the peak of each path, per space (CPU, fresh processes). The
    blocked case streams ``4 x block`` entities so that their gradient stays small beside a
    block."""
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for geometry in SPACES:
        for mode, b, n, blk in (("oneshot", batch_oneshot, n_oneshot, None),
                                ("blocked", batch_blocked, 4 * block, block)):
            out = _in_child({"geometry": geometry, "batch": b, "n": n, "dim": 16,
                             "block": blk}, env)
            cols = n if blk is None else blk
            rows.append({"geometry": geometry, "mode": mode, "batch": b, "n": n, "block": blk,
                         "peak_mb": round(out["peak_bytes"] / 1e6, 1),
                         "temporaries": round(out["peak_bytes"] / (8 * b * cols), 2)})
            print(rows[-1], flush=True)
    return rows


def _cases(args) -> list[tuple[int, int]]:
    if args.cases:
        return [tuple(int(v) for v in c.lower().split("x")) for c in args.cases.split(",")]
    return [(b, n) for b in map(int, args.batches.split(","))
            for n in map(int, args.sizes.split(","))]


def _fmt_row(r: dict) -> str:
    if r.get("skipped"):
        mem = f"skipped (predicted {r['predicted_gb']:.1f} GB)"
    elif "error" in r:
        mem = f"failed: {r['error']}"
    else:
        mem = f"{r['peak_gb']:.3f} GB"
    secs = "" if r.get("seconds") is None else f"{r['seconds']:.2f}"
    block = "" if r["block"] is None else str(r["block"])
    budget = "" if r.get("budget_gib") is None else f"{r['budget_gib']:g}"
    return (f"| {r['batch']} | {r['n']} | {r['mode']} | {budget} | {block} | "
            f"{r['predicted_gb']:.3f} | {mem} | {secs} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="256,1024,4096")
    ap.add_argument("--sizes", default="4000,40000,165000")
    ap.add_argument("--cases", help="BxN,... instead of every batch with every size")
    ap.add_argument("--modes", default="oneshot,blocked")
    ap.add_argument("--geometry", default="poincare", choices=SPACES)
    ap.add_argument("--dim", type=int, default=16, help="space dimension (model.dim: 16)")
    ap.add_argument("--block", type=int, help="entities per block (default: block_size)")
    ap.add_argument("--budget-mb", type=float, help="block_size's budget (default: its own)")
    ap.add_argument("--budgets-gb", help="blocked rows at each of these budgets, in GiB "
                    "(hardware.loss_memory_gb), e.g. 2,8,32")
    ap.add_argument("--max-gb", type=float, default=12.0,
                    help="skip one-shot cases predicted to need more")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(one_case(**spec, device="cpu")))
        return 0
    device = str(resolve_device(args.device))
    meta = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if args.calibrate:
        rows = calibrate()
        result = {"machine": meta, "calibration": rows}
    else:
        print(f"{args.geometry}, dim {args.dim}, {device}; peak memory beyond the inputs, "
              "seconds per forward + backward")
        print("| batch | entities | mode | budget GiB | block | predicted GB | peak | s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = []
        budgets = ([None if args.budget_mb is None else int(args.budget_mb * 2**20)]
                   if not args.budgets_gb else
                   [int(float(g) * 2**30) for g in args.budgets_gb.split(",")])
        for b, n in _cases(args):
            for mode, budget in [(m, bud) for m in args.modes.split(",")
                                 for bud in (budgets if m == "blocked" else [None])]:
                function = mode if mode in PEAK_BYTES_PER_PAIR else None
                if function:
                    blk, predicted = None, PEAK_BYTES_PER_PAIR[mode] * b * n
                elif mode == "oneshot":
                    blk, predicted = None, ONESHOT_TEMPS[args.geometry] * 8 * b * n
                else:
                    blk = args.block or block_size(b, n, device, budget)
                    predicted = BLOCK_TEMPS * 8 * b * blk
                row = {"batch": b, "n": n, "mode": mode, "block": blk, "dim": args.dim,
                       "geometry": args.geometry, "predicted_gb": predicted / GB,
                       "budget_gib": None if budget is None else budget / 2**30}
                if mode != "blocked" and predicted > args.max_gb * GB:
                    row["skipped"] = True
                else:
                    out = run_case({"geometry": args.geometry, "batch": b, "n": n,
                                    "dim": args.dim, "block": blk, "function": function},
                                   device)
                    row.update(out)
                    if "peak_bytes" in out:
                        row["peak_gb"] = out["peak_bytes"] / GB
                rows.append(row)
                print(_fmt_row(row), flush=True)
        result = {"machine": meta, "rows": rows}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False,
                                         suffix=".tmp") as f:
            json.dump(result, f, indent=1)
        os.replace(f.name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
