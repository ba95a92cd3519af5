# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# Among countries with enough samples, the highest median error; then, from the predictions
# themselves, how many are wrong at each level and what they are confused with. A label naming
# an entity the model does not have (`data.prune_entities` keeps only the entities seen in
# training) can never be predicted: those rows are counted apart. The per-country table's
# `top_confusion` is at the country level; when no country is ever wrong (the demo's synthetic
# features make countries easy), the confusions below come from the first level that has
# mistakes.

# %%
enough = pc[pc["n"] >= max(3, int(pc["n"].quantile(0.5)))]
worst = enough.sort_values("median_km", ascending=False).head(8)
display(worst[["country", "name", "n", "median_km", "acc_country", "top_confusion",
               "top_confusion_n"]])
pred = pd.read_parquet(run / "predictions.parquet")
levels = ["country", "region", "subregion", "city"]
wrong = {lv: pred[pred[f"true_{lv}"].notna() & (pred[f"pred_{lv}"] != pred[f"true_{lv}"])]
         for lv in levels}
absent = m.get("labels_absent_from_model", {})
display(pd.DataFrame({"wrong": {lv: len(w) for lv, w in wrong.items()},
                      "of which the true entity is not in the model": absent}).fillna(0)
        .astype(int).rename_axis("level"))
level = next((lv for lv in levels if len(wrong[lv])), None)
confusions = None
if level is None:
    print("no prediction is wrong at any level: there is nothing to confuse")
else:
    if level != "country":
        print(f"no country is ever wrong; the most frequent confusions at the {level} level "
              f"({absent.get(level, 0)} of its {len(wrong[level])} wrong rows name a true "
              f"{level} the model does not have):")
    confusions = (wrong[level].groupby([f"true_{level}", f"pred_{level}"], dropna=False).size()
                  .sort_values(ascending=False).head(10).to_frame("samples"))
confusions

# %% [markdown]
# ## Accuracy and speed against beam width
#
# The descent keeps the best `beam` entities at each level. Width 1 is greedy; wider beams
# approach flat search over every entity, at a cost. Predictions here are made as the run's
# evaluation made them: with its retrieval memory (`eval.memory`, the training samples nearest
# each query voting at each level with the weights fitted after training), when it has one.

# %%
import time

from hiergeo.data.splits import load_data
from hiergeo.evaluate import build_memory, load_run
from hiergeo.metrics import entity_accuracy
from hiergeo.predict import predict

cfg, model, hier, gz = load_run(run, device="cpu")
data = load_data(cfg, gz)
memory = build_memory(cfg, data.train, "cpu", run_dir=run)    # None without one
val = data.val
x, truth = val.inputs(range(len(val))), val.ids.numpy()
rows = []
for b in BEAMS:
    t = time.perf_counter()
    p = predict(model, x, hier, cfg.loss.tau, beams=[b] * 4, memory=memory)
    t = time.perf_counter() - t
    acc = entity_accuracy(p.paths, truth)
    rows.append({"beam": b, "queries/s": len(x) / t, "comparisons": p.comparisons.mean(),
                 **{f"top1_{lv}": acc[f"top1_{lv}"] for lv in ["country", "region", "city"]}})
curve = pd.DataFrame(rows)
ax = curve.plot(x="beam", y=["top1_country", "top1_region", "top1_city"], marker="o")
ax.set_ylabel("top-1 accuracy"); plt.show()
curve

# %% [markdown]
# ## Why `top1_city` is not `acc_city`
#
# They measure different things (`results/README.md`):
#
# - `acc_city` is OSV-5M's accuracy (`hiergeo/metrics/osv5m.py`): the predicted **point**
#   (with `eval.coords=city`, the top city's coordinates; `weighted`, a probability-weighted
#   point) is reverse-geocoded (`eval.geocoder`) and its key compared with the true key;
# - `top1_city` is the entity accuracy (`hiergeo/metrics/tables.py`): the **path**'s city
#   compared with the label's entity.
#
# With `coords=city` and the gazetteer as geocoder (the defaults) a city's own coordinates
# geocode back to it, so the two agree row for row in `metrics.json`; `coords=weighted` or
# `geocoder=reverse_geocoder` can part them. A larger gap comes from how the predictions were
# made: `predict(...)` without `memory=` is the model alone, without what the run's retrieval
# memory adds: on the demo run, whose fitted memory weight is largest at the city level
# (`calibration.json`), about 0.69 against 0.53. The cell below measures both at the run's own
# beam width.

# %%
beams = list(cfg.eval.beams)
alone = entity_accuracy(predict(model, x, hier, cfg.loss.tau, beams=beams).paths, truth)
mixed = entity_accuracy(predict(model, x, hier, cfg.loss.tau, beams=beams,
                                memory=memory).paths, truth)
known = pred["hit_city"].notna()
disagree = int(((pred["pred_city"] == pred["true_city"]) != pred["hit_city"])[known].sum())
print(f"{disagree} of {int(known.sum())} rows where the geocoded point and the path disagree "
      f"about the city (coords={cfg.eval.coords}, geocoder={cfg.eval.geocoder})")
pd.Series({"acc_city (metrics.json: the point, geocoded)": m["acc_city"],
           "top1_city (metrics.json: the path)": m["top1_city"],
           "top1_city here, model + memory": mixed["top1_city"],
           "top1_city here, model alone": alone["top1_city"]}, name=f"beams {beams}").to_frame()
