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
# # 04 · Comparing two models, the OSV-5M way
#
# For analysts: score any geolocation model's predictions against a truth table with
# OSV-5M's metrics (the same functions `hiergeo.evaluate` uses), then compare two models
# overall and per country, each difference with a paired bootstrap confidence interval.
#
# By default this notebook makes its own small example (offline): photos at random places,
# a GeoCLIP-style model writing its top-5 guesses, and an OSV-5M-baseline-style model writing
# radians. Point `PREDICTIONS` and `TRUTH` at your own files to compare real models.

# %% tags=["parameters"]
# Parameters: your files (None: build the example), the output folder, example size
PREDICTIONS = None          # e.g. ["geoclip.csv", "baseline.csv"]
TRUTH = None                # e.g. "test.csv" (OSV-5M's, with its label columns)
OUT = "compare_demo"
N = 400
RESAMPLES = 1000

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Image, display

import gazetteer
from hiergeo.score import score_files

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The example data
#
# The truth: `N` photos near random GeoNames places, with ids, coordinates, and no label
# columns (hiergeo labels them with the gazetteer's `osv5m` mode, as OSV-5M labelled its
# images). Model "geoclip" is usually within tens of km and writes `lat_1, lon_1, ..., p_1,
# ...`; model "baseline" is right at country level more often than not, and writes `id,
# lat, lon` in radians, as OSV-5M's baseline script does.

# %%
if PREDICTIONS is None:
    gz = gazetteer.load()
    rng = np.random.default_rng(0)
    cities = gz.level("city")
    pick = cities.iloc[rng.choice(len(cities), N, replace=False)]
    lat, lon = pick["point_lat"].to_numpy(), pick["point_lon"].to_numpy()
    ids = [f"photo{i:05d}" for i in range(N)]
    pd.DataFrame({"id": ids, "latitude": lat, "longitude": lon}).to_csv(
        out / "truth.csv", index=False)

    def moved(km_scale, share_far):   # near the truth, or at another random place
        far = rng.random(N) < share_far
        other = cities.iloc[rng.choice(len(cities), N)]
        d = rng.exponential(km_scale, N) / 111.0
        a = rng.uniform(0, 2 * np.pi, N)
        la = np.clip(lat + d * np.sin(a), -89.9, 89.9)
        lo = (lon + d * np.cos(a) + 180) % 360 - 180
        return (np.where(far, other["point_lat"], la), np.where(far, other["point_lon"], lo))

    top = {"id": ids}
    p1 = rng.uniform(0.3, 0.95, N)
    for k in range(1, 6):
        top[f"lat_{k}"], top[f"lon_{k}"] = moved(30 * k, 0.15 * k)
        top[f"p_{k}"] = p1 / k
    pd.DataFrame(top).to_csv(out / "geoclip.csv", index=False)
    b_lat, b_lon = moved(300, 0.35)
    pd.DataFrame({"id": ids, "lat": np.radians(b_lat), "lon": np.radians(b_lon)}).to_csv(
        out / "baseline.csv", index=False)
    PREDICTIONS = [str(out / "baseline.csv"), str(out / "geoclip.csv")]
    TRUTH = str(out / "truth.csv")
pd.read_csv(PREDICTIONS[-1]).head(3)

# %% [markdown]
# ## Score both, compare them
#
# `score_files` reads each file (columns guessed; the notes say what it read and decided),
# joins it with the truth by id (ids that do not match are refused, never dropped silently),
# scores it and, with two files or more, compares every model with the first. The
# command line does the same: `python -m hiergeo.score baseline.csv geoclip.csv --truth
# truth.csv --out compare_demo`.

# %%
res = score_files(PREDICTIONS, TRUTH, out=out, resamples=RESAMPLES)
for name, m in res["models"].items():
    print(f"{name}:", *m["notes"], sep="\n  ")
pd.DataFrame({name: m["summary"] for name, m in res["models"].items()}).loc[
    ["n", "geoscore", "median_km", "acc_25km", "acc_country", "acc_region", "acc_city"]]

# %% [markdown]
# ## Differences with confidence intervals
#
# One row per metric: both models' values, the difference (second minus first, on the same
# photos), its 95% interval from a paired bootstrap over photos, and which model the
# interval favours (empty when it includes 0). Lower is better for the km columns.

# %%
cmp = res["comparison"]
overall = cmp[cmp["scope"] == "overall"].drop(columns=["scope", "name", "country_name"])
overall

# %% [markdown]
# ## Per country
#
# The same, per true country (largest first). Small countries have wide intervals: a
# difference there is rarely a finding.

# %%
geo = cmp[(cmp["scope"] == "country") & (cmp["metric"] == "geoscore")]
geo[["name", "country_name", "n", *res["models"], "diff", "ci_low", "ci_high", "better"]].head(12)

# %% [markdown]
# ## Where one model beats the other
#
# Blue: the second model is better there; red: the first; pale: the interval includes 0.
# `compare.html` in the output folder shows the same map with every figure on hover and opens
# offline in any browser.

# %%
display(Image(filename=str(out / "difference_map.png")))
print("open", (out / "compare.html").resolve())

# %% [markdown]
# ## Calibration
#
# A model that reports probabilities (here geoclip's `p_1`, read as the probability that its
# country is right) gets a reliability report per level: is it right as often as it says?

# %%
for name, m in res["models"].items():
    for level, rep in m["calibration"].items():
        print(f"{name}, {level}: ECE {rep['ece']:.3f}, says {rep['mean_confidence']:.0%}, "
              f"right {rep['accuracy']:.0%} (n={rep['n']})")
