"""Every CUDA path of hiergeo in one command, for whoever has a GPU (issue 24).

    python scripts/gpu_check.py [--out-dir results/benchmarks] [--only STAGE,...]
    python scripts/gpu_check.py --dry-run-cpu      # every stage at toy sizes on the CPU
    make gpu-check

In about 4 minutes on one H200 (16 CPUs) it runs, each stage on its own clock and none
stopping the others (a failure is recorded with the end of its traceback):

- ``devices``: the spellings auto, cuda, cuda:0 and cpu through ``resolve_device`` and the
  trainer's ``Processes`` (each CUDA spelling must end indexed), and the errors for ``tpu``
  and an index past the GPUs;
- ``loss_memory``: the blocked full-candidate loss at batch 4096 over every entity of the
  gazetteer (165k): peak GB and seconds per forward + backward at budgets of 2, 8 and 32 GiB
  (``hardware.loss_memory_gb``), at the default and at half the free memory (the former
  default);
- ``features``: extraction with a ViT-L/14-sized model (``vit_large_patch14_clip_224``,
  random weights) at bf16 on 3,072 synthetic photos of OSV-5M's sizes (512 x 384 to
  1024 x 768; 24 batches of 128, so that 12 workers all have work): the model alone,
  decoding alone (the former PIL path and today's), and ``hiergeo.features.extract`` end to
  end with the former path, the CPU path (12 workers as in the issue, and the default) and
  nvJPEG, with the cosine of each photo's features between the CPU path and nvJPEG;
- ``photos``: the user's path by its commands on the GPU: ``hiergeo.features --device
  cuda`` (the embedded backbone) on 256 synthetic photos placed at real cities, ``hiergeo.train
  hardware.device=cuda`` (smoke preset), ``hiergeo.export``, ``hiergeo.predict --device
  cuda --map``;
- ``train``: the ``osv5m`` preset (its default sibling margin, 64 s less start-up) on a
  synthetic OSV-5M-shaped store of 300,000 x 1024 float16 features: samples/s over 300
  steps, and the end-of-run evaluation with the retrieval memory; then ``export`` and
  predicting the validation store;
- ``torchrun_train``: the same under ``torchrun --nproc_per_node <every visible GPU>`` with
  ``hardware.device=cuda`` (NCCL), a few steps;
- ``torchrun_eval``: ``torchrun ... -m hiergeo.evaluate --device cuda`` on that run.

It writes ``gpu.json`` and ``gpu.md`` (the machine's name, each stage's status, seconds and
figures) to ``--out-dir`` and ends with a short table. Without CUDA it says so and exits 0;
``--dry-run-cpu`` runs every stage at toy sizes on the CPU (tiny ViT, small store, gloo) to
check the script before a GPU slot is spent on it (output to a temporary folder unless
``--out-dir`` is given). Exit status: 0 when every stage passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Stage sizes on a GPU and in the CPU dry run.
SIZES = {
    "gpu": {"photos": 3072, "photo_sizes": [(512, 384), (682, 512), (910, 512), (1024, 768)],
            "backbone": "vit_large_patch14_clip_224", "batch": 128, "workers": 12,
            "pipeline_photos": 256, "rows": 300_000, "val_rows": 5_000, "dim": 1024,
            "steps": 300, "ddp_steps": 40, "loss_batch": 4096, "loss_n": None,
            "budgets_gib": [2, 8, 32], "model_reps": 10},
    "cpu": {"photos": 48, "photo_sizes": [(320, 240), (400, 300)],
            "backbone": "vit_tiny_patch16_224", "batch": 16, "workers": 2,
            "pipeline_photos": 32, "rows": 20_000, "val_rows": 500, "dim": 64,
            "steps": 10, "ddp_steps": 4, "loss_batch": 128, "loss_n": 4_000,
            "budgets_gib": [1 / 1024, 1 / 256], "model_reps": 2},
}
#: Seconds each stage may take before it is stopped (GPU; the dry run gets 4 times as much).
LIMITS = {"devices": 30, "loss_memory": 40, "features": 150, "photos": 60, "train": 150,
          "torchrun_train": 75, "torchrun_eval": 45}
STAGES = list(LIMITS)


class StageTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise StageTimeout in this (main) thread after ``seconds``."""
    def stop(signum, frame):
        raise StageTimeout(f"stopped after its limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _bench(name: str):
    """A module of benchmarks/ (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict:
    import torch

    out = {"host": platform.node(), "platform": platform.platform(),
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpus=torch.cuda.device_count(), gpu=props.name,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return out


# -- synthetic inputs ------------------------------------------------------------------------
def _photo(args) -> None:
    """One JPEG that compresses like a photo: smooth shapes and gradients, a little grain."""
    import numpy as np
    from PIL import Image

    path, (w, h), seed = args
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.float32)
    detail = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3),
                                                     dtype=np.uint8)).resize((w, h)))
    img = 0.8 * img + 0.2 * detail + rng.normal(0, 4, (h, w, 3))
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_photos(folder: Path, n: int, sizes, gz=None, seed: int = 0):
    """``n`` synthetic JPEGs of the given sizes, in parallel; a table ``id, path, latitude,
    longitude`` (positions near real cities when a gazetteer is given, else 0, 0)."""
    from multiprocessing import Pool

    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{i:05d}.jpg", sizes[i % len(sizes)], seed * 100_000 + i)
            for i in range(n)]
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_photo, jobs, chunksize=8)
    lat = lon = np.zeros(n)
    if gz is not None:
        e = gz.entities
        cities = np.flatnonzero(e["depth"].to_numpy() == 4)
        pick = np.random.default_rng(seed).choice(cities, n)
        lat, lon = e["lat"].to_numpy(float)[pick], e["lon"].to_numpy(float)[pick]
    return pd.DataFrame({"id": [f"p{i:05d}" for i in range(n)],
                         "path": [str(j[0]) for j in jobs], "latitude": lat,
                         "longitude": lon})


# -- stages ------------------------------------------------------------------------------------
def stage_devices(ctx) -> dict:
    import torch

    from hiergeo.config import load_config
    from hiergeo.devices import resolve_device
    from hiergeo.train.processes import Processes

    cuda = torch.cuda.is_available()
    rows, ok = {}, True
    for spelling in ("auto", "cuda", "cuda:0", "cpu"):
        try:
            dev = resolve_device(spelling)
            p = Processes(load_config("smoke", [f"hardware.device={spelling}"]))
            rows[spelling] = {"resolve_device": str(dev), "processes": str(p.device)}
            p.close()
            ok &= dev == p.device and (dev.type == "cpu" or dev.index is not None)
        except Exception as exc:  # noqa: BLE001 - recorded; without CUDA it is expected
            rows[spelling] = {"error": f"{type(exc).__name__}: {exc}"}
            ok &= not cuda and spelling.startswith("cuda") and "not available" in str(exc)
    for bad in ("tpu", f"cuda:{torch.cuda.device_count() if cuda else 0}"):
        try:
            resolve_device(bad)
            rows[bad] = {"error": None}
            ok = False
        except ValueError as exc:
            rows[bad] = {"error": str(exc)}
    if not ok:
        raise AssertionError(f"a device spelling did not resolve as it should: {rows}")
    return {"spellings": rows}


def stage_loss_memory(ctx) -> dict:
    import torch

    import gazetteer
    from hiergeo.losses.contrastive import BLOCK_TEMPS, block_size, cuda_budget

    lm = _bench("bench_loss_memory")
    dev, s = ctx["device"], ctx["sizes"]
    n = s["loss_n"] or len(gazetteer.load().entities)
    b = s["loss_batch"]
    cases = [(f"{g:g} GiB", int(g * 2**30)) for g in s["budgets_gib"]]
    cases.append(("default", None))
    if dev.type == "cuda":
        cases.append(("half the free memory (former default)", cuda_budget(dev)))
    rows = []
    for name, budget in cases:
        blk = block_size(b, n, dev, budget)
        best = None
        for _ in range(2):
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            got = lm.one_case("poincare", b, n, 16, blk, str(dev))
            best = got if best is None or got["seconds"] < best["seconds"] else best
        rows.append({"budget": name, "budget_gib": None if budget is None else budget / 2**30,
                     "batch": b, "entities": n, "block": blk, "blocks": -(-n // blk),
                     "predicted_gb": BLOCK_TEMPS * 8 * b * blk / 1e9,
                     "peak_gb": best["peak_bytes"] / 1e9, "seconds": best["seconds"]})
        print(f"    loss {name}: block {blk}, peak {rows[-1]['peak_gb']:.1f} GB, "
              f"{best['seconds']:.3f} s", flush=True)
    return {"rows": rows}


def _extract_rate(records, backbone, out: Path, ctx, decode: str, workers="sizes") -> float:
    from hiergeo.features import extract

    t = time.perf_counter()
    extract(records, out, backbone=backbone, batch_size=ctx["sizes"]["batch"],
            workers=ctx["sizes"]["workers"] if workers == "sizes" else workers,
            shard_size=100_000, device=str(ctx["device"]), progress=False, decode=decode)
    return len(records) / (time.perf_counter() - t)


def stage_features(ctx) -> dict:
    import dataclasses

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from hiergeo.data.images import ImageRows, collate_images
    from hiergeo.data.store import FeatureStore
    from hiergeo.devices import loader_workers
    from hiergeo.model.backbones import Preprocess, create_backbone

    dev, s, tmp = ctx["device"], ctx["sizes"], ctx["tmp"] / "features"
    records = make_photos(tmp / "photos", s["photos"], s["photo_sizes"])
    sizes = {f"{w}x{h}" for w, h in s["photo_sizes"]}
    mb = float(np.mean([Path(p).stat().st_size for p in records["path"]])) / 1e6
    bb = create_backbone(s["backbone"], random_weights=True)
    bb.model.to(dev, memory_format=torch.channels_last).eval()
    out = {"backbone": s["backbone"], "photos": len(records), "photo_sizes": sorted(sizes),
           "mean_file_mb": round(mb, 3), "batch_size": s["batch"], "workers": s["workers"],
           "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32"}

    x = torch.randn(s["batch"], *bb.data_config["input_size"], device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    auto = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
            else contextlib.nullcontext())
    with torch.inference_mode(), auto:
        for _ in range(2):
            bb.features(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(s["model_reps"]):
            bb.features(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    out["model_images_per_s"] = s["model_reps"] * s["batch"] / (time.perf_counter() - t)
    del x

    fast = bb.transform(uint8=True)  # what extract's CPU path hands over
    legacy = Preprocess(fast.transform)  # the former path: PIL resize, full-size decode
    legacy.steps, legacy.uint8 = None, False
    paths = records["path"].to_numpy()
    for name, tr in (("decode_former_images_per_s", legacy),
                     ("decode_images_per_s", fast)):
        t = time.perf_counter()
        for _ in DataLoader(ImageRows(paths, tr), batch_size=s["batch"],
                            num_workers=s["workers"], collate_fn=collate_images):
            pass
        out[name] = len(paths) / (time.perf_counter() - t)

    former = dataclasses.replace(bb)
    former.transform = lambda draft=True, uint8=False: legacy
    out["end_to_end_former_images_per_s"] = _extract_rate(records, former, tmp / "s-former",
                                                          ctx, "cpu")
    out["end_to_end_cpu_decode_images_per_s"] = _extract_rate(records, bb, tmp / "s-cpu",
                                                              ctx, "cpu")
    out["default_workers"] = loader_workers(dev)
    out["end_to_end_cpu_decode_default_workers_images_per_s"] = _extract_rate(
        records, bb, tmp / "s-cpu-default", ctx, "cpu", workers=None)
    if dev.type == "cuda":
        out["end_to_end_gpu_decode_images_per_s"] = _extract_rate(records, bb,
                                                                  tmp / "s-gpu", ctx, "gpu")
        a, g = FeatureStore(tmp / "s-cpu"), FeatureStore(tmp / "s-gpu")
        ia = a.index["id"].to_numpy(str)
        order = {k: i for i, k in enumerate(g.index["id"].to_numpy(str))}
        fa, fg = a.features(torch.float32), g.features(torch.float32)
        fg = fg[[order[k] for k in ia]]
        cos = torch.nn.functional.cosine_similarity(fa, fg, dim=1).numpy()
        out["cpu_vs_gpu_decode_cosine"] = {"min": float(cos.min()),
                                           "median": float(np.median(cos))}
    for p in tmp.glob("s-*"):
        shutil.rmtree(p, ignore_errors=True)
    del bb, former
    return out


def stage_photos(ctx) -> dict:
    """JPEG -> features -> a small model -> export -> predictions and the map, by the
    commands, on ``--device cuda``."""
    import gazetteer
    from hiergeo.cli import export as export_cli
    from hiergeo.cli import features as features_cli
    from hiergeo.cli import predict as predict_cli
    from hiergeo.cli import train as train_cli

    dev, s, tmp = ctx["device"], ctx["sizes"], ctx["tmp"] / "photos"
    spelling = "cuda" if dev.type == "cuda" else "cpu"
    records = make_photos(tmp / "jpg", s["pipeline_photos"], [(682, 512), (910, 512)],
                          gz=gazetteer.load(), seed=1)
    table = tmp / "photos.csv"
    records.drop(columns="id").to_csv(table, index=False)
    times = {}

    def timed(name, fn, argv):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the commands' summaries
            rc = fn(argv)
        times[name] = time.perf_counter() - t
        if rc not in (0, None):
            raise RuntimeError(f"{name}: exit status {rc} ({argv})")

    timed("features", features_cli.main, ["--data", str(table), "--out", str(tmp / "store"),
                                          "--device", spelling, "--batch-size", "64",
                                          "--workers", str(min(4, s["workers"]))])
    timed("train", train_cli.main, ["--config", "smoke", f"data.train={tmp / 'store'}",
                                    f"run.out={tmp}", "run.id=run", "run.overwrite=true",
                                    f"hardware.device={spelling}", "data.val_fraction=0.2",
                                    "optim.max_steps=20", "run.val_every=0"])
    timed("export", export_cli.main, ["--run", str(tmp / "run"), "--out", str(tmp / "model"),
                                      "--overwrite"])
    timed("predict", predict_cli.main, [
        "--model", str(tmp / "model"), str(tmp / "jpg"), "--out", str(tmp / "pred.csv"),
        "--map", str(tmp / "map.html"), "--device", spelling, "--no-progress"])
    import pandas as pd

    pred = pd.read_csv(tmp / "pred.csv")
    if len(pred) != len(records) or not (tmp / "map.html").stat().st_size:
        raise AssertionError(f"{len(pred)} predictions for {len(records)} photos")
    return {"photos": len(records), "command_seconds": times, "predicted": len(pred),
            "map_kb": round((tmp / "map.html").stat().st_size / 1e3, 1)}


def _osv5m_overrides(ctx, run_id: str, steps: int) -> list[str]:
    t = ctx["tmp"] / "train"
    return [f"data.train={t / 'store'}", f"data.val={t / 'val'}",
            f"data.feature_dim={ctx['sizes']['dim']}", f"run.out={t}", f"run.id={run_id}",
            "run.overwrite=true", f"optim.max_steps={steps}", "run.val_every=0",
            "run.log_every=20" if steps >= 100 else "run.log_every=2",
            "run.checkpoint_every=100000", "run.tensorboard=false", "eval.maps=false",
            "model.sibling_margin=0.75",
            "hardware.device=cuda" if ctx["device"].type == "cuda" else "hardware.device=cpu"]


def stage_train(ctx) -> dict:
    import numpy as np
    import pandas as pd

    import gazetteer
    from hiergeo.cli import export as export_cli
    from hiergeo.cli import predict as predict_cli
    from hiergeo.train import load_config, run

    s, t = ctx["sizes"], ctx["tmp"] / "train"
    scale = _bench("bench_scale")
    gz = gazetteer.load()
    t0 = time.perf_counter()
    scale.write_synthetic_store(t / "store", s["rows"], s["dim"], gz)
    scale.write_synthetic_store(t / "val", s["val_rows"], s["dim"], gz, seed=1)
    store_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = run(load_config("osv5m", _osv5m_overrides(ctx, "osv5m", s["steps"])))
    run_s = time.perf_counter() - t0
    log = pd.read_csv(t / "osv5m" / "log.csv")
    sps = log["samples_per_s"].dropna().to_numpy()[1:]  # the first window holds warm-up
    out = {"rows": s["rows"], "dim": s["dim"], "steps": metrics.get("steps", s["steps"]),
           "batch_size": int(load_config("osv5m").optim.batch_size),
           "samples_per_s": float(np.median(sps)) if len(sps) else None,
           "store_seconds": store_s, "run_seconds": run_s,
           "train_seconds": metrics.get("train_seconds"),
           "val_acc_country": metrics.get("acc_country")}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = export_cli.main(["--run", str(t / "osv5m"), "--out", str(t / "model"),
                              "--features-only", "--overwrite"])  # no backbone: features
    if rc != 0:
        raise RuntimeError("export failed")
    out["export_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spelling = "cuda" if ctx["device"].type == "cuda" else "cpu"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = predict_cli.main(["--model", str(t / "model"), str(t / "val"), "--out",
                               str(t / "val_pred.csv"), "--device", spelling, "--no-progress"])
    if rc != 0:
        raise RuntimeError("predict on the validation store failed")
    secs = time.perf_counter() - t0
    out["predict_store_rows_per_s"] = s["val_rows"] / secs
    return out


def _torchrun(ctx, module_args: list[str], limit: float) -> tuple[float, str]:
    import torch

    n = torch.cuda.device_count() if ctx["device"].type == "cuda" else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(n), *module_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"torchrun exit status {r.returncode}:\n{r.stderr[-2500:]}")
    return secs, r.stderr[-1500:]


def stage_torchrun_train(ctx) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    if not (ctx["tmp"] / "train" / "store" / "store.json").exists():
        raise RuntimeError("the train stage left no store")
    steps = ctx["sizes"]["ddp_steps"]
    secs, _ = _torchrun(ctx, ["-m", "hiergeo.train", "--config", "osv5m",
                              *_osv5m_overrides(ctx, "ddp", steps)], ctx["limit"] - 5)
    log = pd.read_csv(ctx["tmp"] / "train" / "ddp" / "log.csv")
    sps = log["samples_per_s"].dropna().to_numpy()[1:]
    return {"processes": torch.cuda.device_count() if ctx["device"].type == "cuda" else 2,
            "backend": "nccl" if ctx["device"].type == "cuda" else "gloo", "steps": steps,
            "seconds": secs, "samples_per_s": float(np.median(sps)) if len(sps) else None}


def stage_torchrun_eval(ctx) -> dict:
    t = ctx["tmp"] / "train"
    if not (t / "osv5m" / "config.yaml").exists():
        raise RuntimeError("the train stage left no run")
    spelling = "cuda" if ctx["device"].type == "cuda" else "cpu"
    secs, _ = _torchrun(ctx, ["-m", "hiergeo.evaluate", "--run-dir", str(t / "osv5m"), "--data",
                              str(t / "val"), "--out", str(t / "eval"), "--device", spelling],
                        ctx["limit"] - 5)
    m = json.loads((t / "eval" / "metrics.json").read_text())
    ev = m.get("eval", m)
    return {"seconds": secs, "rows": ctx["sizes"]["val_rows"],
            "acc_country": ev.get("acc_country") if isinstance(ev, dict) else None}


# -- report -------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check: {m.get('gpu', 'no GPU')} on {m['host']}", "",
             f"`{report['command']}`, {report['finished']}; {m.get('gpus', 0)} GPU(s), "
             f"{m['cpus']} CPUs, torch {m['torch']} (CUDA {m['cuda']}), Python {m['python']}."
             f" Total {report['seconds']:.0f} s (gazetteer set-up "
             f"{report.get('setup_seconds', 0):.0f} s).", "",
             "| stage | status | seconds | headline |", "| --- | --- | --- | --- |"]
    for name, r in report["stages"].items():
        status = "ok" if r["ok"] else ("skipped" if r.get("skipped") else "FAILED")
        lines.append(f"| {name} | {status} | {r['seconds']:.1f} | {headline(name, r)} |")
    f = report["stages"].get("features", {})
    if f.get("ok"):
        lines += ["", f"## Extraction: {f['backbone']}, {f['dtype']}, {f['photos']} photos "
                  f"({', '.join(f['photo_sizes'])}), batch {f['batch_size']}, "
                  f"{f['workers']} workers", "", "| measure | images/s |", "| --- | --- |"]
        for k in ("model_images_per_s", "decode_former_images_per_s", "decode_images_per_s",
                  "end_to_end_former_images_per_s", "end_to_end_cpu_decode_images_per_s",
                  "end_to_end_cpu_decode_default_workers_images_per_s",
                  "end_to_end_gpu_decode_images_per_s"):
            if k in f:
                lines.append(f"| {k.removesuffix('_images_per_s').replace('_', ' ')} | "
                             f"{f[k]:,.0f} |")
        if "cpu_vs_gpu_decode_cosine" in f:
            c = f["cpu_vs_gpu_decode_cosine"]
            lines.append(f"\nFeatures from nvJPEG against the CPU path: cosine min "
                         f"{c['min']:.4f}, median {c['median']:.5f}.")
    lm = report["stages"].get("loss_memory", {})
    if lm.get("ok"):
        lines += ["", "## Blocked loss memory (poincare, dim 16, one forward + backward)", "",
                  "| budget | batch | entities | block | blocks | peak GB | s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in lm["rows"]:
            lines.append(f"| {r['budget']} | {r['batch']} | {r['entities']} | {r['block']} | "
                         f"{r['blocks']} | {r['peak_gb']:.2f} | {r['seconds']:.3f} |")
    failed = {k: r for k, r in report["stages"].items() if not r["ok"] and "error" in r}
    for k, r in failed.items():
        lines += ["", f"## {k}: failed", "", "```", r["error"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def headline(name: str, r: dict) -> str:
    """One line of a stage's figures for the tables (never raises)."""
    try:
        return _headline(name, r)
    except Exception as exc:  # noqa: BLE001 - a summary must not lose the report
        return f"(no summary: {type(exc).__name__}: {exc})"


def _headline(name: str, r: dict) -> str:
    if not r["ok"]:
        return (r.get("error") or r.get("skipped") or "").strip().splitlines()[-1][:120]
    if name == "devices":
        return ", ".join(f"{k} -> {v.get('processes', 'error')}"
                         for k, v in r["spellings"].items() if "processes" in v)
    if name == "features":
        keys = [("end_to_end_cpu_decode_images_per_s", "e2e CPU decode"),
                ("end_to_end_gpu_decode_images_per_s", "e2e nvJPEG"),
                ("end_to_end_former_images_per_s", "e2e former"),
                ("model_images_per_s", "model alone")]
        return "; ".join(f"{label} {r[k]:,.0f} img/s" for k, label in keys if k in r)
    if name == "loss_memory":
        return "; ".join(f"{x['budget']}: {x['peak_gb']:.1f} GB {x['seconds']:.2f} s"
                         for x in r["rows"])
    if name == "photos":
        return (f"{r['predicted']} photos predicted, map {r['map_kb']} kB; "
                + ", ".join(f"{k} {v:.1f} s" for k, v in r["command_seconds"].items()))
    if name in ("train", "torchrun_train"):
        sps = r.get("samples_per_s")
        return (f"{_fmt(sps)} samples/s" if sps else "") + (
            f" ({r['processes']} process(es), {r['backend']})" if "backend" in r else
            f", {r['rows']:,} x {r['dim']} store, batch {r['batch_size']}")
    if name == "torchrun_eval":
        return f"{r['rows']} rows in {r['seconds']:.1f} s"
    return ""


def write(report: dict, out_dir: Path, t_all: float) -> None:
    from hiergeo.files import atomic_write_text

    report["seconds"] = time.perf_counter() - t_all
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "gpu.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "gpu.md", markdown(report))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where gpu.json and gpu.md go (default: results/benchmarks; with "
                         "--dry-run-cpu a temporary folder)")
    ap.add_argument("--only", help=f"stages to run, of {','.join(STAGES)}")
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="every stage at toy sizes on the CPU (checks this script)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.dry_run_cpu:
        print("no CUDA GPU here: nothing to check (--dry-run-cpu runs the stages at toy "
              "sizes on the CPU)")
        return 0
    sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kind = "cpu" if args.dry_run_cpu else "gpu"
    device = torch.device("cpu") if args.dry_run_cpu else torch.device("cuda", 0)
    stages = args.only.split(",") if args.only else STAGES
    unknown = set(stages) - set(STAGES)
    if unknown:
        print(f"error: unknown stage(s) {sorted(unknown)}; choose from {STAGES}",
              file=sys.stderr)
        return 2
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run_cpu
                               else ROOT / "results" / "benchmarks")
    work = Path(tempfile.mkdtemp(prefix="hiergeo-gpu-check-"))
    ctx = {"device": device, "sizes": SIZES[kind], "tmp": work}
    report = {"command": "python scripts/gpu_check.py " + " ".join(argv or sys.argv[1:]),
              "kind": kind, "machine": machine(), "stages": {}}
    t_all = time.perf_counter()
    print(f"gpu check on {report['machine'].get('gpu', 'the CPU (dry run)')}, "
          f"work folder {work}", flush=True)
    import gazetteer

    gazetteer.load()  # built on a fresh machine's first call: once, outside the stages' clocks
    report["setup_seconds"] = time.perf_counter() - t_all
    print(f"[setup] gazetteer ready in {report['setup_seconds']:.1f} s", flush=True)
    for name in stages:
        limit = LIMITS[name] * (4 if args.dry_run_cpu else 1)
        ctx["limit"] = limit
        t = time.perf_counter()
        print(f"[{name}] (limit {limit} s)", flush=True)
        try:
            with time_limit(limit):
                res = {"ok": True, **globals()[f"stage_{name}"](ctx)}
        except Exception as exc:  # noqa: BLE001 - one stage failing must not lose the others
            res = {"ok": False, "error": "".join(traceback.format_exception(exc))[-4000:]}
        res["seconds"] = time.perf_counter() - t
        report["stages"][name] = res
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        print(f"[{name}] {'ok' if res['ok'] else 'FAILED'} in {res['seconds']:.1f} s: "
              f"{headline(name, res)}", flush=True)
        write(report, out_dir, t_all)  # after each stage: a run stopped from outside keeps it
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(r["ok"] for r in report["stages"].values())
    print(f"\n{'every stage passed' if ok else 'SOME STAGES FAILED'} in "
          f"{report['seconds']:.0f} s on {report['machine'].get('gpu', 'the CPU (dry run)')};"
          f" {out_dir / 'gpu.md'} and gpu.json")
    for name, r in report["stages"].items():
        print(f"  {name:<15} {'ok' if r['ok'] else 'FAILED':<7} {r['seconds']:6.1f} s  "
              f"{headline(name, r)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
