"""Pure plotting functions: arrays/metrics in, a :class:`matplotlib.figure.Figure` out; the caller saves it
(:func:`save_png`).

No pyplot and no global state: each function builds its own ``Figure``, which ``savefig`` renders with the Agg
backend whatever backend pyplot may be using, so plots work headless and never leak open figures. Per-label plots
are small multiples, one panel per label, so 14–26 labels stay legible, drawn on the one-canvas sheets of
:mod:`cxrfa.plots.canvas`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cxrfa.metrics import ECE_BINS, auc_ap, expected_calibration_error
from cxrfa.plots.canvas import (
    DPI,
    UNIT_TICK_LABELS,
    UNIT_TICKS,
    Sheet,
    fixed_margins,
    panel_artists,
    save_png,
)

__all__ = [
    "DPI",
    "calibration_plot",
    "confusion_grid",
    "fixed_margins",
    "panel_artists",
    "pr_curves",
    "pr_points",
    "roc_curves",
    "roc_points",
    "save_png",
    "subgroup_chart",
    "training_curves",
]


def _counts_at_cuts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when predicting positive at p >= each distinct score, highest score first.

    Returns:
        tps, fps: (T,) each, T = the number of distinct scores.
    """
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.size - 1]  # (T,) last row of each run of tied scores
    tps = np.cumsum(ys)[last]
    return tps, (last + 1) - tps


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score, from (0, 0): scikit-learn's ``roc_curve`` with
    ``drop_intermediate=False``, without importing scikit-learn (and SciPy) into every run for two curves.

    Args:
        y: (n,) labels 0/1, both present.
        p: (n,) scores.
    """
    tps, fps = _counts_at_cuts(y, p)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def pr_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) as scikit-learn's ``precision_recall_curve`` returns them: lowest cut first (recall
    decreasing), ending at (1, 0).

    Args:
        y: (n,) labels 0/1, at least one positive.
        p: (n,) scores.
    """
    tps, fps = _counts_at_cuts(y, p)
    precision = tps / (tps + fps)
    return np.r_[precision[::-1], 1.0], np.r_[tps[::-1] / tps[-1], 0.0]


def _known(y_true: np.ndarray, y_prob: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isfinite(y_true[:, j])
    return y_true[mask, j], y_prob[mask, j]


def _outer(j: int, ncols: int, drawn: Sequence[bool]) -> tuple[bool, bool]:
    """Whether panel ``j`` of a grid of same-axes panels is the lowest drawn one of its column, and whether it is in
    the first column: the panels that carry tick labels and axis names, as with shared axes."""
    return not any(drawn[j + ncols :: ncols]), j % ncols == 0


def _label_panels(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str],
    title: str,
    draw: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    style: Mapping[str, Any],
    axis_names: tuple[str, str],
) -> Figure:
    """One unit-square panel per label: the curve and reference line ``draw(y, p)`` returns (x, y and the reference's
    (2, 2) end points, in unit coordinates, and the panel title) on the label's known rows, or a one-class note.

    Every panel has the same unit axes, so only the outer ones are labelled, as with shared axes: tick labels and
    axis names on the lowest drawn panel of each column and on the first column.
    """
    sheet = Sheet(len(labels), title)
    known = [_known(y_true, y_prob, j) for j in range(len(labels))]
    drawn = [y.size > 0 and y.min() < y.max() for y, _ in known]
    references = []
    for j, (label, (y, p)) in enumerate(zip(labels, known, strict=True)):
        sheet.frame(j)
        if not drawn[j]:
            sheet.title(j, label)
            note = f"one class only\n({int(y.sum())} pos / {int((y == 0).sum())} neg)"
            sheet.text(j, 0.5, 0.5, note, fontsize=8)
            continue
        cx, cy, ref, text = draw(y, p)
        x, yy = sheet.at(j, cx, np.minimum(cy, 1.0) / 1.01)  # y axis 0..1.01, as the panels had
        sheet.ax.add_line(Line2D(x, yy, gid=f"curve/{j}", **style))
        references.append(np.c_[sheet.at(j, ref[:, 0], ref[:, 1] / 1.01)])
        sheet.title(j, f"{label}\n{text}")
        bottom, left = _outer(j, sheet.ncols, drawn)
        sheet.ticks(
            j,
            UNIT_TICKS,
            np.asarray(UNIT_TICKS) / 1.01,
            UNIT_TICK_LABELS if bottom else None,
            UNIT_TICK_LABELS if left else None,
            (axis_names[0] if bottom else None, axis_names[1] if left else None),
        )
    sheet.lines(references, "references", colors="grey", linewidths=0.8, linestyles="--")
    return sheet.finish()


def roc_curves(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], title: str = "ROC curves"
) -> Figure:
    """One ROC panel per label (curve + chance diagonal, AUROC in the title).

    Args:
        y_true: (N, C) labels 1/0/NaN (unknown rows are dropped per label).
        y_prob: (N, C) probabilities.
        labels: C label names.
        title: figure title.
    """

    def draw(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        fpr, tpr = roc_points(y, p)
        return fpr, tpr, np.array([[0.0, 0.0], [1.0, 1.0]]), f"AUROC {auc_ap(y, p)[0]:.3f}"

    style = {"color": "tab:blue", "lw": 1.5}
    return _label_panels(
        y_true, y_prob, labels, title, draw, style, ("false positive rate", "true positive rate")
    )


def pr_curves(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], title: str = "Precision-recall curves"
) -> Figure:
    """One precision–recall panel per label (step curve + prevalence baseline, AP in the title)."""

    def draw(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        precision, recall = pr_points(y, p)
        prev = float(y.mean())
        text = f"AP {auc_ap(y, p)[1]:.3f} (prev. {prev:.3f})"
        return recall, precision, np.array([[0.0, prev], [1.0, prev]]), text

    style = {"color": "tab:orange", "lw": 1.5, "drawstyle": "steps-post"}
    return _label_panels(y_true, y_prob, labels, title, draw, style, ("recall", "precision"))


def confusion_grid(
    confusion: dict[str, np.ndarray],
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
    thresholds_from_val: bool = False,
) -> Figure:
    """One 2x2 confusion matrix per label (``[[tn, fp], [fn, tp]]``), coloured by row-normalised rate.

    Args:
        confusion: label -> (2, 2) counts.
        labels: C label names (panel order).
        thresholds: (C,) decision thresholds the counts were taken at, shown in each panel title; None: 0.5.
        thresholds_from_val: True when the thresholds were chosen on val (max F1); said in the title, since a
            threshold chosen on the reported split itself would flatter the counts.
    """
    cuts = [0.5] * len(labels) if thresholds is None else [float(t) for t in thresholds]
    if len(cuts) != len(labels):
        raise ValueError(f"{len(cuts)} thresholds for {len(labels)} labels")
    how = (
        "per-label thresholds chosen on val (max F1)"
        if thresholds_from_val
        else "threshold 0.5 (no val predictions)"
    )
    sheet = Sheet(len(labels), f"Confusion matrices: predicted positive when p ≥ threshold; {how}")
    cmap = matplotlib.colormaps["Blues"]
    cells, colours = [], []
    for j, (label, cut) in enumerate(zip(labels, cuts, strict=True)):
        sheet.square(j)
        counts = np.asarray(confusion[label], dtype=np.float64)  # (2, 2)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        for (r, c), value in np.ndenumerate(counts):
            x, y = sheet.at(j, [c / 2, (c + 1) / 2], [1 - (r + 1) / 2, 1 - r / 2])  # row 0 on top
            cells.append([(x[0], y[0]), (x[1], y[0]), (x[1], y[1]), (x[0], y[1])])
            colours.append(cmap(rates[r, c]))
            sheet.text(
                j,
                (c + 0.5) / 2,
                1 - (r + 0.5) / 2,
                f"{int(value)}",
                fontsize=9,
                color="white" if rates[r, c] > 0.6 else "black",
            )
        sheet.frame(j)
        sheet.title(j, f"{label}\nthreshold {cut:.3g}")
        bottom, left = _outer(
            j, sheet.ncols, [True] * len(labels)
        )  # every 2x2 panel alike: label the outer ones
        names = ("predicted" if bottom else None, "true" if left else None)
        sheet.ticks(
            j,
            (0.25, 0.75),
            (0.75, 0.25),
            ["neg", "pos"] if bottom else None,
            ["neg", "pos"] if left else None,
            names,
        )
    sheet.ax.add_collection(
        PolyCollection(cells, facecolors=colours, edgecolors="none", gid="cells"), autolim=False
    )
    return sheet.finish()


def calibration_plot(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> Figure:
    """Reliability diagram over all known entries (top) and the histogram of predicted probabilities (bottom)."""
    known = np.isfinite(y_true)
    y, p = y_true[known], y_prob[known]
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    filled = count > 0
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)[filled] / count[filled]
    frac_pos = np.bincount(bins, weights=y, minlength=n_bins)[filled] / count[filled]
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    fixed_margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.4, hspace=0.15)
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    top.plot(mean_p, frac_pos, marker="o", color="tab:blue", label="model")
    top.set_ylabel("fraction positive")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(
        f"Calibration (ECE {expected_calibration_error(y_true, y_prob, n_bins):.3f}, {n_bins} bins)", y=1.0
    )
    bottom.hist(p, bins=np.linspace(0, 1, n_bins + 1), color="tab:blue", alpha=0.7)
    if filled.any() and count.max() > 50 * max(1.0, float(np.median(count[filled]))):
        bottom.set_yscale("log")  # one crowded bin (usually near 0) would flatten the rest
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("entries")
    bottom.set_xlim(0, 1)
    return fig


def _is_lr(key: str) -> bool:
    return key.rsplit("/", 1)[-1] == "lr" or key.rsplit("/", 1)[-1].startswith("lr_")


def training_curves(history: list[dict[str, float]]) -> Figure:
    """Per-epoch curves in up to three panels: losses (``train/loss``, ``train/loss_<term>``, ``val/loss``),
    metrics (``val/macro_auc``…) and, when recorded, the learning rate on its own axis (log scale when it spans
    more than a factor of 10), so a 1e-4 rate neither flattens nor shares the AUROC axis. The x axis is each
    entry's ``epoch`` or its 1-based position."""
    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    keys = sorted({k for h in history for k in h if k != "epoch"})
    lr_keys = [k for k in keys if _is_lr(k)]
    loss_keys = [k for k in keys if "loss" in k.rsplit("/", 1)[-1]]
    other_keys = [k for k in keys if k not in loss_keys and k not in lr_keys]
    panels = [(loss_keys, "Losses", "loss"), (other_keys, "Metrics", "value")]
    if lr_keys:
        panels.append((lr_keys, "Learning rate", "learning rate"))
    fig = Figure(figsize=(5.2 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    fixed_margins(fig, left=0.75, right=0.15, bottom=0.55, top=0.35, wspace=0.85)
    for ax, (group, title, ylabel) in zip(axes, panels, strict=True):
        for key in group:
            values = [float(h.get(key, np.nan)) for h in history]
            ax.plot(
                epochs,
                values,
                marker="o",
                ms=3,
                lw=2 if key in ("train/loss", "val/macro_auc") else 1.2,
                label=key,
            )
        ax.set_title(title, y=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if group:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "nothing recorded", ha="center", va="center", transform=ax.transAxes)
    if lr_keys:
        rates = np.array([h.get(k, np.nan) for h in history for k in lr_keys], dtype=np.float64)
        rates = rates[np.isfinite(rates) & (rates > 0)]
        if rates.size and rates.max() > 10 * rates.min():
            axes[-1].set_yscale("log")
    return fig


_FAIR = re.compile(r"^fair/(?P<attr>[^/]+)/(?P<kind>auc|tpr_gap)/(?P<group>.+)$")


def subgroup_chart(scalars: dict[str, float]) -> Figure:
    """Subgroup macro AUROC (left) and TPR gaps (right) from the ``fair/...`` keys of a metrics dict."""
    rows = [(m["attr"], m["group"], m["kind"], float(v)) for k, v in scalars.items() if (m := _FAIR.match(k))]
    if not rows:
        fig = Figure(figsize=(6, 2))
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no subgroup attributes (sex / age / view) available", ha="center", va="center")
        ax.set_axis_off()
        return fig
    frame = pd.DataFrame(rows, columns=["attr", "group", "kind", "value"])
    order = list(dict.fromkeys(zip(frame["attr"], frame["group"], strict=True)))
    names = [f"{a}: {g}" for a, g in order]
    colors = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(frame["attr"]))}
    fig = Figure(figsize=(11, 0.35 * len(order) + 1.8))
    left, right = fig.subplots(1, 2, sharey=True)
    name_width = 0.3 + 0.065 * max(map(len, names))  # inches for the longest subgroup name at 8 pt
    fixed_margins(fig, left=name_width, right=0.2, bottom=0.55, top=0.35, wspace=0.3)
    for ax, kind in ((left, "auc"), (right, "tpr_gap")):
        lookup = {(a, g): v for a, g, k, v in frame.itertuples(index=False) if k == kind}
        values = [lookup.get(key, np.nan) for key in order]
        bar_colors = [colors[a] for a, _ in order]
        ax.barh(range(len(order)), np.nan_to_num(values), color=bar_colors)
        ax.axvline(0, color="black", lw=0.8)
    left.invert_yaxis()  # shared y: first subgroup on top in both panels
    if np.isfinite(scalars.get("macro_auc", np.nan)):
        left.axvline(scalars["macro_auc"], color="grey", ls="--", lw=1, label="overall macro AUROC")
        left.legend(fontsize=8, loc="lower right")
    left.set_yticks(range(len(order)), names, fontsize=8)
    left.set_xlim(0, 1)
    left.set_xlabel("macro AUROC")
    left.set_title("AUROC by subgroup", y=1.0)
    right.set_xlabel("TPR gap (group − reference)")
    worst = scalars.get("fair/worst_tpr_gap", np.nan)
    right.set_title(f"TPR gap (worst |gap| {worst:.3f})" if np.isfinite(worst) else "TPR gap", y=1.0)
    return fig
