"""Feature-extraction speed: images/s end to end, and which stage bounds it.

Usage::

    python benchmarks/bench_features.py [--n 256] [--batch-size 64] [--workers 2]
        [--backbone efficientnet_lite0-embedded] [--random-weights] [--device auto]
        [--out results/benchmarks]

    python benchmarks/bench_features.py --backbone B1 B2 ... [--hf-config clip-b16]
        [--random-weights] [--n 64]

    python benchmarks/bench_features.py --world N [--data DATA] [--shard-size K] [--repeats R]
        [--batch-size 16] [--workers W] [--backbone ...] [--random-weights] [--device auto]

Makes ``--n`` 640x480 JPEGs from scikit-image's sample photos (random crops, so they compress
like photos), then times three things on the same files: decoding + preprocessing alone
(DataLoader, no model), the model alone on ready tensors, and ``hiergeo.features.extract``
end to end. On a GPU the model runs under bf16 autocast. Writes ``features.json`` to --out.

Several ``--backbone`` names (timm names, the embedded default, ``hf:FOLDER_OR_NAME``) are
timed one after another on the same photos and written side by side to
``features_backbones.json``. ``--hf-config NAME`` adds a Hugging Face vision tower built from
a config written here, with random weights and no download (timing only): ``clip-b16``
(openai/clip-vit-base-patch16's vision tower and processor: ViT-B/16, 224 px) or
``streetclip`` (geolocal/StreetCLIP's: ViT-L/14 at 336 px, a full CLIPModel config).
``--interleave R`` then times the models alone again, one batch each in turn, R rounds, and
keeps each one's best round: on a shared machine whose load changes while the backbones run
one after another, this compares them under the same load.

``--world N`` times the command line instead, once as one process and once as N under
``torchrun --standalone --nproc_per_node N``, on DATA (default: the shared OSV-5M playset when
present, else ``--n`` made photos), each process with its defaults (threads and DataLoader
workers from its share of the CPUs; ``OMP_NUM_THREADS`` is removed from their environment so
both runs choose alike). It prints, for each, the wall seconds of the whole command (Python and
torch start-up included), the CPU seconds of all its processes (``RUSAGE_CHILDREN``), images/s,
and whether the two stores hold the same rows and features (float16 rounding apart). The
shard size defaults to half of one rank's share, so every rank gets work, and the batch size
to 16, so a shard holds several batches (a DataLoader decodes the next batch while the model
runs on this one; with one batch a shard nothing overlaps). The machine's load average is
printed too: on a shared machine other work skews both runs. Prints only.
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

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hiergeo.data import read_records
from hiergeo.data.images import ImageRows, collate_images
from hiergeo.data.store import FeatureStore
from hiergeo.devices import cpu_count, resolve_device
from hiergeo.features import extract
from hiergeo.model import EMBEDDED, create_backbone

ROOT = Path(__file__).resolve().parents[1]
PLAYSET = ROOT.parent / "shared" / "images" / "osv5m_playset" / "labels.csv"


def make_photos(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    import skimage.data as d

    sources = [Image.fromarray(getattr(d, k)()).convert("RGB")
               for k in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((640, 480))
        p = folder / f"{i:05d}.jpg"
        img.save(p, quality=90)
        rows.append((str(i), str(p), 0.0, 0.0))
    return pd.DataFrame(rows, columns=["id", "path", "latitude", "longitude"])


#: vision-tower configs of published checkpoints, for --hf-config (no download): the
#: ``vision_config`` of their config.json and their preprocessor_config.json
HF_CONFIGS = {
    "clip-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, patch_size=16, image_size=224, projection_dim=512),
    "streetclip": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, patch_size=14, image_size=336,
                       projection_dim=768),
}


def hf_config_folder(name: str, folder: Path) -> str:
    """``hf:FOLDER`` for a random-weights copy of a published vision tower: its config and
    its CLIP image processor (shortest edge = crop = image size, CLIP's mean/std, bicubic)
    written to ``folder``; ``streetclip`` as a full CLIPModel config, as StreetCLIP's is."""
    import transformers as tf

    v = HF_CONFIGS[name]
    vision = {k: x for k, x in v.items() if k != "projection_dim"}
    if name == "streetclip":
        tf.CLIPConfig(vision_config=vision, projection_dim=v["projection_dim"]).save_pretrained(
            folder)
    else:
        tf.CLIPVisionConfig(**vision).save_pretrained(folder)
    size = v["image_size"]
    tf.CLIPImageProcessor(size={"shortest_edge": size},
                          crop_size={"height": size, "width": size}).save_pretrained(folder)
    return f"hf:{folder}"


def _timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall seconds and the CPU seconds of it and all its descendants."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def _compare(a: Path, b: Path) -> dict:
    sa, sb = FeatureStore(a), FeatureStore(b)
    same_rows = sa.index.equals(sb.index)
    fa, fb = sa.features(torch.float32), sb.features(torch.float32)
    diff = float((fa - fb).abs().max()) if same_rows and len(fa) else float("nan")
    close = same_rows and torch.allclose(fa, fb, rtol=2e-3, atol=2e-3)
    return {"rows": len(sa), "same_rows": bool(same_rows), "max_abs_diff": diff,
            "stores_match": bool(close)}


def world_main(args) -> dict:
    """One process against ``args.world`` under torchrun, on the same photos."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or (PLAYSET if PLAYSET.exists() else None)
        if data is None:
            data = tmp / "photos.csv"
            make_photos(tmp, args.n).drop(columns="id").to_csv(data, index=False)
        n = len(read_records(data))
        shard = args.shard_size or max(1, -(-n // (2 * args.world)))
        common = ["-m", "hiergeo.features", "--data", str(data), "--shard-size", str(shard),
                  "--batch-size", str(args.batch_size), "--device", args.device,
                  "--backbone", args.backbone]
        common += ["--random-weights"] if args.random_weights else []
        common += ["--workers", str(args.workers)] if args.workers is not None else []
        runs = {"1": [sys.executable, *common],
                str(args.world): [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node", str(args.world), *common]}
        report = {"machine": {"cpus": cpu_count(), "platform": platform.platform()},
                  "data": str(data), "n_images": n, "shard_size": shard,
                  "batch_size": args.batch_size, "device": args.device,
                  "load_avg_before": round(os.getloadavg()[0], 2), "runs": {}}
        for r in range(args.repeats):
            for procs, cmd in runs.items():
                out = tmp / f"store-{procs}-{r}"
                t = _timed([*cmd, "--out", str(out)], env)
                best = report["runs"].get(procs)
                if best is None or t["wall_s"] < best["wall_s"]:
                    report["runs"][procs] = {
                        "processes": int(procs), "wall_s": round(t["wall_s"], 2),
                        "cpu_s": round(t["cpu_s"], 2),
                        "images_per_s": round(n / t["wall_s"], 1)}
        report["comparison"] = _compare(tmp / "store-1-0", tmp / f"store-{args.world}-0")
    one, many = report["runs"]["1"], report["runs"][str(args.world)]
    report["speedup"] = round(one["wall_s"] / many["wall_s"], 2)
    report["cpu_ratio"] = round(many["cpu_s"] / one["cpu_s"], 2)
    report["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return report


def time_backbone(bb, records: pd.DataFrame, args, dev, tmp: Path) -> dict:
    """Decoding + preprocessing alone, the model alone on ready tensors, and
    ``hiergeo.features.extract`` end to end, in images/s, for one backbone."""
    n = len(records)
    report = {"backbone": bb.name, "weights": bb.weights,
              "input_size": list(bb.data_config["input_size"]), "dim": bb.dim}
    ds = ImageRows(records["path"].to_numpy(), bb.transform())
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate_images):
        pass
    report["decode_images_per_s"] = round(n / (time.perf_counter() - t), 1)

    x = torch.randn(args.batch_size, *bb.data_config["input_size"], device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), autocast:
        bb.features(x)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = max(1, n // args.batch_size)
        t = time.perf_counter()
        for _ in range(reps):
            bb.features(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        report["model_images_per_s"] = round(reps * args.batch_size
                                             / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    extract(records, tmp / f"store-{abs(hash(bb.name))}", backbone=bb,
            batch_size=args.batch_size, workers=args.workers, device=args.device,
            progress=False)
    report["end_to_end_images_per_s"] = round(n / (time.perf_counter() - t), 1)
    stages = {"decode": report["decode_images_per_s"], "model": report["model_images_per_s"]}
    report["bound_by"] = min(stages, key=stages.get)
    return report


def interleaved(backbones: list, args, dev) -> list:
    """Each backbone's best images/s on one batch of ready tensors over ``args.interleave``
    rounds, the backbones taking turns (None each when not asked for)."""
    if args.interleave < 1 or len(backbones) < 2:
        return [None] * len(backbones)
    best = [0.0] * len(backbones)
    xs = [torch.randn(args.batch_size, *bb.data_config["input_size"], device=dev
                      ).contiguous(memory_format=torch.channels_last) for bb in backbones]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), autocast:
        for _ in range(args.interleave):
            for i, (bb, x) in enumerate(zip(backbones, xs, strict=True)):
                t = time.perf_counter()
                bb.features(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                best[i] = max(best[i], args.batch_size / (time.perf_counter() - t))
    return [round(b, 1) for b in best]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64; with --world 16")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers (default: min(4, CPUs); with --world, each "
                         "process's own default)")
    ap.add_argument("--backbone", nargs="+", default=[EMBEDDED],
                    help="one or more (timed in turn); with --world only the first")
    ap.add_argument("--hf-config", choices=sorted(HF_CONFIGS), action="append", default=[],
                    help="also time this published HF vision tower, random weights")
    ap.add_argument("--interleave", type=int, default=0,
                    help="with several backbones: rounds of one batch each in turn, best kept")
    ap.add_argument("--random-weights", action="store_true",
                    help="every backbone untrained (the embedded one keeps its weights "
                         "unless given; timing only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--world", type=int, default=None,
                    help="compare 1 process with this many under torchrun (prints only)")
    ap.add_argument("--data", type=Path, default=None, help="with --world: photos to use")
    ap.add_argument("--shard-size", type=int, default=None, help="with --world")
    ap.add_argument("--repeats", type=int, default=1,
                    help="with --world: runs of each; the fastest is kept")
    args = ap.parse_args(argv)
    if args.world:
        args.backbone = args.backbone[0]
        args.batch_size = args.batch_size or 16
        return world_main(args)
    args.batch_size = args.batch_size or 64
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    dev = resolve_device(args.device)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "device": str(dev),
               "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
               "torch_threads": torch.get_num_threads(),
               "load_avg_before": round(os.getloadavg()[0], 2)}
    runs, built = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        records = make_photos(tmp / "photos", args.n)
        names = list(args.backbone)
        for i, h in enumerate(args.hf_config):
            (tmp / f"hf{i}").mkdir()
            names.append(hf_config_folder(h, tmp / f"hf{i}"))
        for name in names:
            rw = args.random_weights and not (name == EMBEDDED and len(names) > 1)
            rw = rw or name.startswith(f"hf:{tmp}")
            bb = create_backbone(name, random_weights=rw)
            bb.model.to(dev, memory_format=torch.channels_last).eval()
            r = time_backbone(bb, records, args, dev, tmp)
            if name.startswith(f"hf:{tmp}"):  # the temporary folder means nothing later
                r["backbone"] = f"hf: {args.hf_config[names.index(name) - len(args.backbone)]}"
            r["random_weights"] = bool(rw)
            runs.append(r)
            built.append(bb)
            log_line = (f"{r['backbone']}: decode {r['decode_images_per_s']}, model "
                        f"{r['model_images_per_s']}, end to end "
                        f"{r['end_to_end_images_per_s']} images/s")
            print(log_line, file=sys.stderr)
        for r, best in zip(runs, interleaved(built, args, dev), strict=True):
            if best is not None:
                r["model_interleaved_images_per_s"] = best
    machine["load_avg_after"] = round(os.getloadavg()[0], 2)
    common = {"machine": machine, "n_images": args.n, "batch_size": args.batch_size,
              "workers": args.workers}
    args.out.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:
        report = {**common, **runs[0]}
        report["machine"] = {k: machine[k] for k in ("cpus", "platform", "device", "gpu")}
        report = {k: report[k] for k in ("machine", "backbone", "input_size", "n_images",
                                         "batch_size", "workers", "decode_images_per_s",
                                         "model_images_per_s", "end_to_end_images_per_s",
                                         "bound_by")}
        name = "features.json" if dev.type == "cpu" else f"features_{dev.type}.json"
    else:
        report = {**common, "command": "python benchmarks/bench_features.py "
                  + " ".join(argv if argv is not None else sys.argv[1:]), "runs": runs}
        name = ("features_backbones.json" if dev.type == "cpu"
                else f"features_backbones_{dev.type}.json")
    print(json.dumps(report, indent=2))
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
