# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Errors by country
#
# Load a training run from `results/` (the demo run by default: run `make demo` first), read
# its per-country table, draw the error map, find the worst countries and what they are confused
# with, and see how accuracy and speed change with the beam width of the descent.

# %% tags=["parameters"]
# Parameters (the tests point RUN at the smoke run they train)
RUN = "../results/demo"
BEAMS = [1, 2, 3, 5]

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

run = Path(RUN)
if not (run / "metrics.json").exists():
    raise FileNotFoundError(f"{run}: no finished run here; `make demo` writes results/demo")
m = json.loads((run / "metrics.json").read_text())
pd.Series({k: m[k] for k in ["n", "acc_country", "acc_region", "acc_subregion", "acc_city",
                             "median_km", "mean_km", "geoscore"]}).to_frame(run.name)

# %% [markdown]
# ## The per-country table
#
# One row per true country: samples, mean and median error, GeoScore, OSV-5M accuracy per level
# (`hits_*` / `n_*`), and the country most often predicted instead (empty if never wrong).
# `keep_default_na=False` keeps Namibia's code `NA` a string.

# %%
pc = pd.read_csv(run / "per_country.csv", keep_default_na=False, na_values=[""])
pc[["country", "top_confusion"]] = pc[["country", "top_confusion"]].fillna("")
assert pc["n"].sum() == m["n"]          # the table adds up to the whole test set
pc.head(10)

# %% [markdown]
# ## The error map

# %%
if (run / "error_map.png").exists():
    display(Image(filename=str(run / "error_map.png")))
else:                                   # runs with eval.maps=false: draw it now
    import gazetteer
    from hiergeo.reports import error_map
    display(Image(filename=str(error_map(pc, gazetteer.load(), run / "error_map.png"))))

# %% [markdown]
# ## The worst countries, and what they are confused with
#
# Among countries with enough samples, the highest median error; then the confusion counts from
# the predictions themselves.

# %%
enough = pc[pc["n"] >= max(3, int(pc["n"].quantile(0.5)))]
worst = enough.sort_values("median_km", ascending=False).head(8)
display(worst[["country", "name", "n", "median_km", "acc_country", "top_confusion",
               "top_confusion_n"]])
pred = pd.read_parquet(run / "predictions.parquet")
wrong = pred[pred["pred_country"] != pred["true_country"]]
confusions = (wrong.groupby(["true_country", "pred_country"]).size()
              .sort_values(ascending=False).head(10).to_frame("samples"))
confusions

# %% [markdown]
# ## Accuracy and speed against beam width
#
# The descent keeps the best `beam` entities at each level. Width 1 is greedy; wider beams
# approach flat search over every entity, at a cost.

# %%
import time

from hiergeo.data.splits import load_data
from hiergeo.evaluate import load_run
from hiergeo.metrics import entity_accuracy
from hiergeo.predict import predict

cfg, model, hier, gz = load_run(run, device="cpu")
val = load_data(cfg, gz).val
x, truth = val.inputs(range(len(val))), val.ids.numpy()
rows = []
for b in BEAMS:
    t = time.perf_counter()
    p = predict(model, x, hier, cfg.loss.tau, beams=[b] * 4)
    t = time.perf_counter() - t
    acc = entity_accuracy(p.paths, truth)
    rows.append({"beam": b, "queries/s": len(x) / t, "comparisons": p.comparisons.mean(),
                 **{f"top1_{lv}": acc[f"top1_{lv}"] for lv in ["country", "region", "city"]}})
curve = pd.DataFrame(rows)
ax = curve.plot(x="beam", y=["top1_country", "top1_region", "top1_city"], marker="o")
ax.set_ylabel("top-1 accuracy"); plt.show()
curve
