"""Maps and curves for analysts (matplotlib, headless; geopandas with the shipped polygons)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import THRESHOLDS_KM


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_map(table: pd.DataFrame, gz, path: str | Path, column: str = "median_km",
              title: str | None = None) -> Path:
    """World map of ``column`` per true country (``table`` from
    :func:`hiergeo.metrics.per_country`), log colour scale; countries without test samples
    are grey. Uses the gazetteer's Natural Earth country polygons."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    shapes = gz.polygons_frame("country")
    merged = shapes.merge(table[["country", column, "n"]], how="left", left_on="key",
                          right_on="country")
    fig, ax = plt.subplots(figsize=(12, 6))
    shapes.plot(ax=ax, color="#dddddd", edgecolor="white", linewidth=0.3)
    have = merged[merged[column].notna()]
    if len(have):
        vals = have[column].clip(lower=0.1)
        have = have.assign(**{column: vals})
        have.plot(ax=ax, column=column, cmap="viridis_r", edgecolor="white", linewidth=0.3,
                  legend=True, norm=LogNorm(vmin=max(vals.min(), 0.1), vmax=max(vals.max(), 1)),
                  legend_kwds={"label": f"{column.replace('_', ' ')} (log scale)",
                               "shrink": 0.6})
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_axis_off()
    ax.set_title(title or f"{column.replace('_', ' ')} per true country "
                 f"({int(table['n'].sum())} samples; grey: none)")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def difference_map(diffs: pd.DataFrame, gz, path: str | Path, title: str) -> Path:
    """World map of a difference between two models per true country (``diffs`` as
    :func:`hiergeo.reports.compare_page.country_differences` writes it: ``country``,
    ``gain`` positive where the model is better, ``sure``): blue where the model is better,
    red where worse, pale where the comparison names no better model, grey without photos."""
    from matplotlib.colors import TwoSlopeNorm

    plt = _pyplot()
    shapes = gz.polygons_frame("country")
    merged = shapes.merge(diffs, how="left", left_on="key", right_on="country")
    fig, ax = plt.subplots(figsize=(12, 6))
    shapes.plot(ax=ax, color="#dddddd", edgecolor="white", linewidth=0.3)
    have = merged[merged["gain"].notna()]
    if len(have):
        span = float(np.nanmax(np.abs(have["gain"]))) or 1.0
        norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
        sure = have["sure"].astype(bool)
        if sure.any():
            have[sure].plot(ax=ax, column="gain", cmap="RdBu", norm=norm, edgecolor="white",
                            linewidth=0.3, legend=True,
                            legend_kwds={"label": "difference, + where the model is better",
                                         "shrink": 0.6})
        if (~sure).any():
            have[~sure].plot(ax=ax, column="gain", cmap="RdBu", norm=norm, alpha=0.35,
                             edgecolor="white", linewidth=0.3)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_axis_off()
    ax.set_title(title + "\n(pale: the 95% interval includes 0; grey: no photos)")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def error_curve(km, path: str | Path, label: str = "model") -> Path:
    """Share of samples within each distance (log x), with OSV-5M's 1/25/200/750/2500 km."""
    plt = _pyplot()
    km = np.sort(np.asarray(km, np.float64))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.clip(km, 0.1, None)
    ax.step(x, np.arange(1, len(km) + 1) / len(km), where="post", label=label)
    for r in THRESHOLDS_KM:
        share = float((km < r).mean()) if len(km) else 0.0
        ax.axvline(r, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{r} km\n{share:.1%}", (r, max(share, 0.1)), textcoords="offset points",
                    xytext=(3, -24), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20038)
    ax.set_ylim(0, 1)
    ax.set_xlabel("great-circle error (km)")
    ax.set_ylabel("share of samples within")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def reliability_diagram(calibration: dict, path: str | Path, title: str | None = None) -> Path:
    """One panel per level: accuracy against mean reported probability per bin (the
    diagonal is perfect calibration), bar widths the bins, with the ECE in the title.
    ``calibration`` is :func:`hiergeo.evaluate.calibration_report`'s output."""
    plt = _pyplot()
    levels = list(calibration)
    fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels), 3.4), sharey=True)
    for ax, lvl in zip(np.atleast_1d(axes), levels, strict=True):
        rep = calibration[lvl]
        bins = rep["bins"]
        if bins:
            lo = np.array([b["lo"] for b in bins])
            width = np.array([b["hi"] - b["lo"] for b in bins])
            ax.bar(lo, [b["accuracy"] for b in bins], width=width, align="edge",
                   edgecolor="k", alpha=0.7, label="accuracy")
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o",
                    color="C3", ms=3, label="mean probability")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{lvl}: ECE {rep['ece']:.3f} (n={rep['n']})", fontsize=9)
        ax.set_xlabel("reported probability")
    np.atleast_1d(axes)[0].set_ylabel("share right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
