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
# # 02 · The tree in the Poincaré ball
#
# hiergeo places every entity of the tree in the Poincaré ball: countries near the centre,
# cities near the edge. Hyperbolic space has room for a tree (the circumference grows
# exponentially with the radius), Euclidean space does not. This notebook shows the embedding
# in 2-D, the distance from the origin per level, how hyperbolic distances between siblings
# follow geography, what curvature does, and the same points under a Euclidean metric.

# %% tags=["parameters"]
# Parameters (the tests point these at a small hand-made places file)
PLACES = None      # None: the bundled world
DIM = 16           # dimension of the embedding used for the measurements

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import gazetteer
from hiergeo.embedding import embed_tree
from hiergeo.geometry import dist, dist0
from hiergeo.geometry.spaces import make_space

gz = gazetteer.load() if PLACES is None else gazetteer.build(PLACES, boundaries=False)
ents = gz.entities
depth = ents["depth"].to_numpy()

# %% [markdown]
# ## The 2-D disk, coloured by continent and by country
#
# In two dimensions the construction spaces siblings evenly around their parent, in the order
# of their geography. Marker size gives the level (countries largest, cities smallest); colour
# the continent (left) or the country (right: 20 colours repeat over some 250 countries, so the
# legend names the largest).

# %%
from matplotlib.lines import Line2D

emb2 = embed_tree(gz, dim=2)
p = emb2.points.numpy()
level_of = dict(zip(ents["depth"], ents["level"], strict=False))   # 1 -> "country", ...
SIZE = {4: 1, 3: 2, 2: 6, 1: 30}                # marker area (pt²) per depth


def dot(colour, label, size=6.0):
    return Line2D([], [], ls="", marker="o", color=colour, markersize=size, label=label)


fig, axes = plt.subplots(1, 2, figsize=(13, 7.5))
for ax, col, cmap in zip(axes, ["continent", "country_code"], ["tab10", "tab20"], strict=True):
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey"))
    codes, values = pd.factorize(ents[col].fillna(""))
    palette = np.array(plt.get_cmap(cmap).colors)
    colour = palette[codes % len(palette)]       # one colour per group, the same at every level
    for d, size in SIZE.items():
        m = depth == d
        ax.scatter(p[m, 0], p[m, 1], s=size, c=colour[m], linewidths=0)
    sizes = ax.legend(handles=[dot("black", level_of[d], max(2.0, np.sqrt(s)))
                               for d, s in SIZE.items()], title="size: level", ncol=4,
                      loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8)
    ax.add_artist(sizes)                          # keep it when the colour legend comes
    if col == "continent":
        shown = [(i, v) for i, v in enumerate(values) if v]
        title = "colour: continent"
    else:
        n = ents["country_code"].value_counts()
        shown = [(i, v) for i, v in enumerate(values) if v in n.index[:8]]
        title = "colour: country (20 colours repeat; the 8 with most entities)"
    ax.legend(handles=[dot(palette[i % len(palette)], v) for i, v in shown], title=title,
              ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8)
    ax.set_aspect("equal"); ax.set_axis_off(); ax.set_title(f"coloured by {col}")
plt.show()

# %% [markdown]
# ## Distance from the origin per level

# %%
emb = embed_tree(gz, dim=DIM)
r = dist0(emb.points).numpy()
pd.DataFrame({"level": ents["level"], "distance from origin": r}).groupby(
    "level", sort=False)["distance from origin"].describe()[["mean", "min", "max"]]

# %% [markdown]
# Each level sits one edge length (about 2.9) further out. In float64 a point can be at most
# about 12.2 from the origin before it rounds onto the boundary: the construction uses 11.5.
#
# ## Hyperbolic versus great-circle distance between siblings
#
# Between siblings, the hyperbolic distance should grow with the distance on the ground, so that
# a near miss in the ball is a near miss on Earth. Below: 20,000 random sibling pairs, and the
# Spearman correlation per level.

# %%
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

# %% [markdown]
# ## Curvature
#
# The ball of curvature −c is the unit ball scaled by 1/√c: the same tree, the same hyperbolic
# distances times 1/√c. Larger c packs points closer to the boundary of a smaller ball.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 5.5))
for ax, c in zip(axes, [0.25, 1.0, 4.0], strict=True):
    e = embed_tree(gz, dim=2, c=c).points.numpy()
    ax.add_patch(plt.Circle((0, 0), 1 / np.sqrt(c), fill=False, color="grey",
                            label="boundary, radius 1/√c"))
    for d in range(depth.max() + 1):                # colour: level (depth 0, the root, at 0)
        m = depth == d
        ax.scatter(e[m, 0], e[m, 1], s=1, color=plt.get_cmap("viridis")(d / 4),
                   label=ents["level"].iloc[np.flatnonzero(m)[0]])
    lim = 1.05 / np.sqrt(0.25)
    ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
    ax.set_title(f"c = {c}: radius 1/√c = {1 / np.sqrt(c):.2f}")
fig.legend(*axes[0].get_legend_handles_labels(), title="colour: level", loc="lower center",
           ncol=6, markerscale=4, fontsize=9)
plt.show()

# %% [markdown]
# ## The same entities under a Euclidean metric
#
# The Euclidean space of the trainer starts its entities at `2 logmap0` of the ball points:
# same directions, same distance from the origin, flat metric. Graph reconstruction (MAP: are an
# entity's parent and children its nearest points?) shows what the flat metric loses.

# %%
from hiergeo.geometry import dist_matrix

flat = make_space("euclidean").init_entities(emb.points)
children = pd.Series(np.arange(len(parent))[parent >= 0]).groupby(parent[parent >= 0]).apply(list)
nodes = rng.choice(np.flatnonzero(depth > 0), size=min(300, int((depth > 0).sum())), replace=False)

def mean_ap(dmat):
    aps = []
    for row, n in zip(dmat, nodes, strict=True):
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

# %% [markdown]
# In the ball, every entity's nearest points are its parent and children (MAP near 1). Under the
# flat metric the same layout crowds the thousands of cities near the rim together: cities of
# other regions come closer than an entity's own children, and MAP drops. Flat space has no
# room for a tree at small dimension; that is the reason for the ball.
