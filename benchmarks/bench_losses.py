"""The loss ablations on the names benchmark's validation split: the shipped geo-weighted loss
against pytorch-metric-learning's proxy and pair losses (``loss.function``).

Usage::

    python benchmarks/bench_losses.py [--functions geo,proxy_anchor,contrastive]
        [--override key=value ... --tag=-NAME] [--threads N] [--merge OLD.json ...]

The committed table: the defaults, then one epoch each, then a second margin per ablation::

    python benchmarks/bench_losses.py --functions geo --threads 1
    python benchmarks/bench_losses.py --override optim.epochs=1 --tag=-1ep --threads 1
    python benchmarks/bench_losses.py --functions proxy_anchor --override optim.epochs=1 \
        --override loss.margin=0.5 --tag=-1ep-m0.5 --threads 1
    python benchmarks/bench_losses.py --functions contrastive --override optim.epochs=1 \
        --override loss.margin=2.0 --tag=-1ep-m2 --threads 1
    (each with --out DIR, then --functions "" --merge DIR/names_losses.json ...)

One ``--config default`` run per function (everything else the shipped defaults, the data the
names benchmark's: :mod:`benchmarks.bench_names`), scored on ``val`` by beam descent with the
retrieval memory (the shipped prediction) and by the model alone (descent without the memory,
where the loss shows undiluted). Validation only: this is a choice of default, and the test
split is for the published table. Writes ``results/benchmarks/names_losses.json/.md``;
``--merge`` keeps rows of earlier runs (functions run in separate processes, two at a time on
two cores); a row of a later file replaces one of the same name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

import gazetteer
from hiergeo import metrics
from hiergeo.config import load_config
from hiergeo.data.names import names_benchmark
from hiergeo.data.splits import read_store_split
from hiergeo.losses import LOSS_CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_names import COLUMNS, hiergeo_rows  # noqa: E402
from bench_train import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--functions", default=",".join(LOSS_CLASSES))
    ap.add_argument("--override", action="append", default=[],
                    help="applied to every run (e.g. loss.margin=0.5)")
    ap.add_argument("--tag", default="", help="appended to run and row names")
    ap.add_argument("--runs", default=str(ROOT / "results" / "names"))
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--threads", type=int, help="torch CPU threads (a hardware setting)")
    ap.add_argument("--merge", nargs="*", default=[])
    args = ap.parse_args(argv)
    functions = [f for f in args.functions.split(",") if f]
    if args.override and not args.tag:
        ap.error("--override needs a --tag=-NAME, so that its runs and rows do not replace "
                 "the defaults' (run ids names-<geometry>-<function><tag>)")
    if unknown := set(functions) - set(LOSS_CLASSES):
        ap.error(f"unknown loss functions {sorted(unknown)}; one of {', '.join(LOSS_CLASSES)}")
    hw = [f"hardware.threads={args.threads}"] if args.threads else []
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    gz = gazetteer.load()
    stores = names_benchmark(gz=gz)
    train, _, _ = read_store_split(stores["train"], load_config("default"), gz, "train")
    rows = []
    geometry = load_config("default").model.geometry
    for f in functions:
        # the default preset learns tau, lam, sigma: the geo loss's only (loss.learn)
        own = [] if f == "geo" else ["loss.learn=[]"]
        r, _ = hiergeo_rows(stores, train, "val", [geometry],
                            [f"loss.function={f}", *own, *args.override, *hw], args.runs, gz,
                            flat=False, tag=f" {f}{args.tag}".replace(" ", "-"))
        rows += [{**row, "function": f, "overrides": " ".join(args.override),
                  "command": " ".join(["python benchmarks/bench_losses.py", *(argv or
                                                                            sys.argv[1:])])}
                 for row in r]
    merged = {}  # by row name: later files replace earlier ones, this run replaces them all
    for path in args.merge:
        old = json.loads(Path(path).read_text())
        if old.get("split", "val") != "val":
            raise SystemExit(f"{path} scores the {old['split']} split, not val")
        merged.update({r["method"]: r for r in old["rows"]})
    rows = list({**merged, **{r["method"]: r for r in rows}}.values())
    res = {"split": "val", "rows": rows,
           "machine": {**machine("cpu"), "threads": torch.get_num_threads()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "names_losses.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    table = pd.DataFrame(rows)[["method", "overrides", *COLUMNS[:7], "seconds"]]
    commands = sorted({r.get("command", "?") for r in rows})
    (out / "names_losses.md").write_text(
        "Loss ablations, names benchmark, validation split (`python benchmarks/"
        "bench_losses.py`); `seconds` is training (with its final evaluation) for the "
        "shipped prediction's row, prediction for the model alone's. Commands:\n\n"
        + "".join(f"- `{c}`\n" for c in commands) + "\n"
        + metrics.markdown_table(table, ".4g"))
    print(table.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
