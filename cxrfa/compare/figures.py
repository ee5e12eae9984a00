"""The comparison's figures, as pure functions returning matplotlib Figures (the caller saves or logs them)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.stats import format_p

_GROUP_COLOURS = {"head": "#4c72b0", "medium": "#dd8452", "tail": "#c44e52"}
_F = TypeVar("_F", bound=Callable[..., Figure])


def _default_style(make: _F) -> _F:
    """Build the figure under matplotlib's default style: another library in the process may have switched
    the global style (Optuna's plots use ggplot), and a report should look the same whatever ran before."""

    @functools.wraps(make)
    def wrapper(*args: object, **kwargs: object) -> Figure:
        with matplotlib.style.context("default"):
            return make(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _short(metric: str) -> str:
    return metric.removeprefix("test/")


@_default_style
def forest_plot(result: pd.DataFrame, metric: str, baseline: str) -> Figure:
    """Δ of each cell against the baseline: per-seed-pair mean (dot) and seed ensemble (diamond), 95% CIs,
    a zero line, and the Holm-adjusted p-value at the right.

    Args:
        result: :attr:`cxrfa.compare.Comparison.result` (``delta``, ``delta_low``, ... ``p_holm``).
        metric: headline metric name, for the axis.
        baseline: the baseline cell, for the axis.
    """
    rows = result[result.index != baseline]
    rows = rows[rows["delta"].notna()] if "delta" in rows.columns else rows.iloc[0:0]
    fig = Figure(figsize=(7.5, 0.55 * max(len(rows), 1) + 1.4), layout="constrained")
    ax = fig.subplots()
    ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1, zorder=0)
    if rows.empty:
        ax.text(
            0.5, 0.5, "no cell paired with the baseline", transform=ax.transAxes, ha="center", va="center"
        )
        ax.set_yticks([])
    else:
        pos = np.arange(len(rows))
        seed_err = np.vstack(
            [rows["delta"] - rows["delta_low"], rows["delta_high"] - rows["delta"]]
        )  # (2, R)
        ens_err = np.vstack([rows["ens_delta"] - rows["ens_low"], rows["ens_high"] - rows["ens_delta"]])
        ax.errorbar(
            rows["delta"],
            pos - 0.12,
            xerr=seed_err,
            fmt="o",
            color="tab:blue",
            capsize=3,
            label="mean per-seed Δ (seeds × patients CI)",
        )
        ax.errorbar(
            rows["ens_delta"],
            pos + 0.12,
            xerr=ens_err,
            fmt="D",
            color="tab:gray",
            markersize=4,
            capsize=2,
            label="seed-ensemble Δ (patients CI)",
        )
        ax.set_yticks(pos, [str(c) for c in rows.index], fontsize=9)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first cell on top, every row the same height
        n = int(rows["n_boot"].max())
        for y, (p, floor) in zip(pos, zip(rows["p_holm"], rows["p_holm_floor"], strict=True), strict=True):
            ax.annotate(
                f"p = {format_p(p, n, bool(floor))}",
                xy=(1.01, y),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=8,
            )
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.set_xlabel(f"Δ {_short(metric)} vs {baseline} (95% CI; Holm-adjusted p at right)")
    ax.grid(axis="x", alpha=0.3)
    return fig


@_default_style
def label_heatmap(
    per_label: pd.DataFrame, label_info: pd.DataFrame, title: str, chance: float = 0.5
) -> Figure:
    """Cells x labels AUROC, labels in the given (head → tail) order with their test positives and group.

    The colour scale runs from ``chance`` (AUROC 0.5) to 1, so equal colours mean equal AUROC in every report.

    Args:
        per_label: cells x labels values.
        label_info: per label ``group`` (head/medium/tail) and ``n_pos``, in ``per_label``'s column order.
        title: figure title.
        chance: the value at the bottom of the colour scale.
    """
    from cxrfa.plots import label_heatmap as heatmap

    ticks = [
        f"{lab} (n+={int(n)})"
        for lab, n in zip(per_label.columns, label_info["n_pos"].fillna(0), strict=True)
    ]
    named = per_label.set_axis(ticks, axis=1)
    fig = heatmap(named, f"{title}\nlabels head → tail by training prevalence; n+ = test positives")
    ax, bar = fig.axes[0], fig.axes[1]
    ax.images[0].set_clim(chance, 1.0)  # one fixed scale, so equal colours mean equal AUROC in every report
    bar.set_ylabel(f"AUROC (scale from chance = {chance})")
    for text in ax.texts:  # annotation colour against the fixed scale
        text.set_color("black" if float(text.get_text()) > (chance + 1) / 2 else "white")
    for tick, group in zip(ax.get_xticklabels(), label_info["group"], strict=True):
        tick.set_color(_GROUP_COLOURS.get(str(group), "black"))
    n_cols = per_label.shape[1]
    groups = label_info["group"].astype(str).tolist()
    starts = [c for c in range(n_cols) if c == 0 or groups[c] != groups[c - 1]]
    for start, end in zip(starts, [*starts[1:], n_cols], strict=True):
        if start:
            ax.axvline(start - 0.5, color="white", linewidth=2)
        ax.text(
            (start + end - 1) / 2,
            -0.6,
            groups[start],
            ha="center",
            va="bottom",
            fontsize=8,
            color=_GROUP_COLOURS.get(groups[start], "black"),
        )
    ax.set_title(ax.get_title(), fontsize=9, pad=16)
    return fig
