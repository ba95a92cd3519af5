"""Poincaré-disk picture of a 2-D embedding: countries and regions coloured by continent."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CONTINENT_COLOURS = {
    "Africa": "#e6550d", "Asia": "#d62728", "Europe": "#1f77b4", "North America": "#2ca02c",
    "South America": "#9467bd", "Oceania": "#17becf", "Antarctica": "#7f7f7f",
}


def plot_disk(emb, gz, out: str | Path, title: str | None = None, label_top: int = 25) -> Path:
    """Draw countries (large dots, labelled for the ``label_top`` with most places) and regions
    (small dots) of a 2-D embedding in the unit disk, edges to their parents."""
    if emb.dim != 2:
        raise ValueError(f"plot_disk needs a 2-D embedding, got dim={emb.dim}")
    pts = emb.points.numpy() * np.sqrt(emb.c)  # draw in the unit disk whatever c is
    e = gz.entities
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, lw=1, color="black"))
    regions = e[e["level"] == "region"]
    countries = e[e["level"] == "country"]
    for rows, size, alpha in ((regions, 3, 0.5), (countries, 30, 0.9)):
        xy = pts[rows["id"].to_numpy()]
        par = pts[rows["parent_id"].to_numpy()]
        colours = [CONTINENT_COLOURS.get(c, "#000000") for c in rows["continent"].fillna("")]
        ax.plot(np.c_[par[:, 0], xy[:, 0], np.full(len(xy), np.nan)].ravel(),
                np.c_[par[:, 1], xy[:, 1], np.full(len(xy), np.nan)].ravel(),
                lw=0.2, color="grey", alpha=0.3)
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colours, alpha=alpha, lw=0, label=None)
    top = countries.nlargest(label_top, "n_places")
    for _, row in top.iterrows():
        x, y = pts[row["id"]]
        ax.annotate(row["key"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name, col in CONTINENT_COLOURS.items():
        ax.scatter([], [], c=col, s=30, label=name)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.set_xlim(-1.02, 1.02)
    ax.set_ylim(-1.02, 1.02)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"{emb.method} embedding, c={emb.c:g}: countries and regions")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out
