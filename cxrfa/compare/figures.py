"""The comparison's figures, as pure functions returning matplotlib Figures (the caller saves or logs them)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.metrics import MetricSpec

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


@_default_style
def contrast_plot(rows: pd.DataFrame, spec: MetricSpec) -> Figure:
    """Δ of each contrast (dot) with its 95% interval, grouped by family, a zero line, Holm p at the right.

    Args:
        rows: the headline metric's rows of :attr:`cxrfa.compare.Comparison.contrasts`.
        spec: the metric, for the axis label and direction.
    """
    fig = Figure(figsize=(7.5, 0.45 * max(len(rows), 1) + 1.4), layout="constrained")
    ax = fig.subplots()
    ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1, zorder=0)
    if rows.empty:
        ax.text(0.5, 0.5, "no contrast tested", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
        return fig
    pos = np.arange(len(rows))
    families = list(dict.fromkeys(rows["family"]))
    colours = {f: f"C{i}" for i, f in enumerate(families)}
    for fam in families:
        mask = (rows["family"] == fam).to_numpy()
        part = rows[mask]
        err = np.vstack([part["delta"] - part["low"], part["high"] - part["delta"]])  # (2, R)
        ax.errorbar(part["delta"], pos[mask], xerr=err, fmt="o", color=colours[fam], capsize=3, label=fam)
    ax.set_yticks(pos, [f"{c} − {o}" for c, o in zip(rows["cell"], rows["other"], strict=True)], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first contrast on top
    for y, p in zip(pos, rows["p_holm"], strict=True):
        text = "–" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
        ax.annotate(f"p = {text}", xy=(1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.legend(
        loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(families), 3), fontsize=8, frameon=False
    )
    better = "right" if spec.higher_is_better else "left"
    ax.set_xlabel(
        f"Δ {spec.name} {spec.arrow} (95% CI; Holm p within family at right; better to the {better})"
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def _annotate(ax: object, values: np.ndarray, fmt: str, dark: object) -> None:
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark(v) else "black",
            )  # type: ignore[attr-defined]


@_default_style
def label_heatmaps(
    per_label: pd.DataFrame, delta: pd.DataFrame, label_info: pd.DataFrame, baseline: str
) -> Figure:
    """Two panels, labels head → tail with their test positives: Δ AUROC vs ``baseline`` on a diverging scale
    centred at 0, and absolute AUROC on the full 0–1 scale.

    Args:
        per_label: cells x labels mean AUROC.
        delta: cells x labels Δ AUROC vs the baseline (NaN row for the baseline).
        label_info: per label ``group`` and ``n_pos``, in the columns' order.
        baseline: the Δ's reference cell.
    """
    cells, labels = list(per_label.index), list(per_label.columns)
    ticks = [f"{lab} (n+={int(n)})" for lab, n in zip(labels, label_info["n_pos"].fillna(0), strict=True)]
    width = max(6.0, 0.55 * len(labels) + 3)
    fig = Figure(figsize=(width, 2 * (0.4 * len(cells) + 2.4)), layout="constrained")  # + rotated names
    ax_d, ax_a = fig.subplots(2, 1)
    d = delta.to_numpy(dtype=float)
    span = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.05
    span = max(span, 1e-3)
    im = ax_d.imshow(d, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    # short bar labels: a bar is as tall as a panel of few cells, and the titles say the rest
    fig.colorbar(im, ax=ax_d, fraction=0.03, pad=0.01).set_label("Δ AUROC", fontsize=8)
    _annotate(ax_d, d, "+.2f", lambda v: abs(v) > 0.6 * span)
    ax_d.set_title(
        f"Δ test AUROC per label vs {baseline} (mean over seed pairs; 0 = same, blue = better)", fontsize=9
    )
    a = per_label.to_numpy(dtype=float)
    im = ax_a.imshow(a, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(im, ax=ax_a, fraction=0.03, pad=0.01).set_label("AUROC", fontsize=8)
    _annotate(ax_a, a, ".2f", lambda v: v < 0.6)
    ax_a.set_title(
        "Test AUROC per label (mean over seeds; full 0–1 scale, 0.5 = chance); labels head → tail, n+ = test "
        "positives",
        fontsize=9,
    )
    for ax in (ax_d, ax_a):
        ax.set_yticks(range(len(cells)), cells, fontsize=8)
        ax.set_xticks(range(len(labels)), ticks, rotation=45, ha="right", fontsize=8)
        for tick, group in zip(ax.get_xticklabels(), label_info["group"], strict=True):
            tick.set_color(_GROUP_COLOURS.get(str(group), "black"))
    return fig
