"""Pure plotting functions: arrays/metrics in, a :class:`matplotlib.figure.Figure` out; the caller saves it.

No pyplot and no global state: each function builds its own ``Figure``, which ``savefig`` renders with the Agg
backend whatever backend pyplot may be using, so plots work headless and never leak open figures. Per-label plots are small multiples, one
panel per label, so 14–26 labels stay legible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cxrfa.metrics import ECE_BINS, auc_ap, expected_calibration_error

DPI = 90  # every figure a run writes is saved at this resolution (text rendering is most of a savefig)
_NCOLS = 5
_PANEL = 2.6  # inches per small-multiple panel
_UNIT_TICKS = (0.0, 0.5, 1.0)
_UNIT_TICK_LABELS = ("0", "0.5", "1")


def _grid(n: int, title: str, ncols: int = _NCOLS) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels in rows of ``ncols`` (unused slots removed)."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    height = _PANEL * nrows + 0.4
    # Fixed margins instead of a layout engine: constrained layout costs seconds per figure at 14-26 panels.
    fig = Figure(figsize=(_PANEL * ncols, height))
    fig.subplots_adjust(
        left=0.6 / (_PANEL * ncols),
        right=0.98,
        bottom=0.5 / height,
        top=1 - 0.75 / height,
        wspace=0.45,
        hspace=0.7,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    fig.suptitle(title, fontsize=13)
    return fig, axes[:n]


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


def _panel_title(ax: Axes, text: str) -> None:
    """A panel title at a fixed height: an explicit ``y`` skips matplotlib's per-draw search for a place above
    the tick labels (a third of the drawing time of a 14-panel figure)."""
    ax.set_title(text, fontsize=9, y=1.0)


def _known(y_true: np.ndarray, y_prob: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isfinite(y_true[:, j])
    return y_true[mask, j], y_prob[mask, j]


def _single_class(ax: Axes, label: str, y: np.ndarray) -> None:
    _panel_title(ax, label)
    ax.text(
        0.5,
        0.5,
        f"one class only\n({int(y.sum())} pos / {int((y == 0).sum())} neg)",
        ha="center",
        va="center",
        fontsize=8,
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _outer(j: int, ncols: int, drawn: Sequence[bool]) -> tuple[bool, bool]:
    """Whether panel ``j`` of a grid of same-axes panels is the lowest drawn one of its column, and whether it is in
    the first column: the panels that carry tick labels and axis names, as with shared axes."""
    return not any(drawn[j + ncols :: ncols]), j % ncols == 0


def _label_panels(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str],
    title: str,
    draw: Callable[[Axes, str, np.ndarray, np.ndarray], None],
    axis_names: tuple[str, str],
) -> Figure:
    """One unit-square panel per label: ``draw(ax, label, y, p)`` on the label's known rows, or a one-class note.

    Every panel has the same unit axes, so only the outer ones are labelled, as with shared axes: tick labels and
    axis names on the lowest drawn panel of each column and on the first column (text is most of a figure's
    drawing).
    """
    fig, axes = _grid(len(labels), title)
    ncols, known = min(_NCOLS, len(labels)), [_known(y_true, y_prob, j) for j in range(len(labels))]
    drawn = [y.size > 0 and y.min() < y.max() for y, _ in known]
    for j, (ax, label, (y, p)) in enumerate(zip(axes, labels, known, strict=True)):
        if not drawn[j]:
            _single_class(ax, label, y)
            continue
        draw(ax, label, y, p)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        bottom, left = _outer(j, ncols, drawn)
        # fixed ticks: the automatic locator re-measures every tick label of 14-26 panels at each draw
        ax.set_xticks(_UNIT_TICKS, _UNIT_TICK_LABELS if bottom else [], fontsize=7)
        ax.set_yticks(_UNIT_TICKS, _UNIT_TICK_LABELS if left else [], fontsize=7)
        if bottom:
            ax.set_xlabel(axis_names[0], fontsize=8)
        if left:
            ax.set_ylabel(axis_names[1], fontsize=8)
    return fig


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

    def draw(ax: Axes, label: str, y: np.ndarray, p: np.ndarray) -> None:
        fpr, tpr = roc_points(y, p)
        ax.plot(fpr, tpr, color="tab:blue", lw=1.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        _panel_title(ax, f"{label}\nAUROC {auc_ap(y, p)[0]:.3f}")

    return _label_panels(y_true, y_prob, labels, title, draw, ("false positive rate", "true positive rate"))


def pr_curves(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], title: str = "Precision-recall curves"
) -> Figure:
    """One precision–recall panel per label (curve + prevalence baseline, AP in the title)."""

    def draw(ax: Axes, label: str, y: np.ndarray, p: np.ndarray) -> None:
        precision, recall = pr_points(y, p)
        ax.step(recall, precision, where="post", color="tab:orange", lw=1.5)
        ax.axhline(float(y.mean()), color="grey", lw=0.8, ls="--")
        _panel_title(ax, f"{label}\nAP {auc_ap(y, p)[1]:.3f} (prev. {y.mean():.3f})")

    return _label_panels(y_true, y_prob, labels, title, draw, ("recall", "precision"))


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
    fig, axes = _grid(len(labels), f"Confusion matrices: predicted positive when p ≥ threshold; {how}")
    ncols = min(_NCOLS, len(labels))
    for j, (ax, label, cut) in enumerate(zip(axes, labels, cuts, strict=True)):
        counts = np.asarray(confusion[label], dtype=np.float64)  # (2, 2)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(counts):
            ax.text(
                c,
                r,
                f"{int(value)}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if rates[r, c] > 0.6 else "black",
            )
        _panel_title(ax, f"{label}\nthreshold {cut:.3g}")
        bottom, left = _outer(j, ncols, [True] * len(labels))  # every 2x2 panel alike: label the outer ones
        ax.set_xticks([0, 1], ["neg", "pos"] if bottom else [], fontsize=7)
        ax.set_yticks([0, 1], ["neg", "pos"] if left else [], fontsize=7)
        if bottom:
            ax.set_xlabel("predicted", fontsize=8)
        if left:
            ax.set_ylabel("true", fontsize=8)
    return fig


def calibration_plot(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> Figure:
    """Reliability diagram over all known entries (top) and the histogram of predicted probabilities (bottom)."""
    known = np.isfinite(y_true)
    y, p = y_true[known], y_prob[known]
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    filled = count > 0
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)[filled] / count[filled]
    frac_pos = np.bincount(bins, weights=y, minlength=n_bins)[filled] / count[filled]
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    top.plot(mean_p, frac_pos, marker="o", color="tab:blue", label="model")
    top.set_ylabel("fraction positive")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(
        f"Calibration (ECE {expected_calibration_error(y_true, y_prob, n_bins):.3f}, {n_bins} bins)"
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
    fig = Figure(figsize=(5.2 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
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
        ax.set_title(title)
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
        fig = Figure(figsize=(6, 2), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no subgroup attributes (sex / age / view) available", ha="center", va="center")
        ax.set_axis_off()
        return fig
    frame = pd.DataFrame(rows, columns=["attr", "group", "kind", "value"])
    order = list(dict.fromkeys(zip(frame["attr"], frame["group"], strict=True)))
    names = [f"{a}: {g}" for a, g in order]
    colors = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(frame["attr"]))}
    fig = Figure(figsize=(11, 0.35 * len(order) + 1.8), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
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
    left.set_title("AUROC by subgroup")
    right.set_xlabel("TPR gap (group − reference)")
    worst = scalars.get("fair/worst_tpr_gap", np.nan)
    right.set_title(f"TPR gap (worst |gap| {worst:.3f})" if np.isfinite(worst) else "TPR gap")
    return fig


def metric_bars(
    names: Sequence[str], means: Sequence[float], errs: Sequence[float] | np.ndarray | None, title: str
) -> Figure:
    """Horizontal bars with error bars (e.g. macro AUROC per ablation cell with its 95% CI).

    Args:
        names: one name per bar.
        means: bar lengths.
        errs: symmetric (N,) half-widths, or asymmetric (2, N) ``[below, above]`` distances; NaN → no bar.
        title: figure title.
    """
    means_arr = np.asarray(means, dtype=np.float64)  # (N,)
    errs_arr = (
        np.nan_to_num(np.asarray(errs, dtype=np.float64)) if errs is not None else None
    )  # (N,) | (2, N)
    above = (
        np.zeros_like(means_arr) if errs_arr is None else (errs_arr[1] if errs_arr.ndim == 2 else errs_arr)
    )
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.5), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(names))
    ax.barh(positions, np.nan_to_num(means_arr), xerr=errs_arr, color="tab:blue", alpha=0.8, capsize=3)
    for pos, value, err in zip(positions, means_arr, above, strict=True):
        ax.text((value if np.isfinite(value) else 0) + err, pos, f"  {value:.3f}", va="center", fontsize=8)
    ax.set_yticks(positions, list(names), fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("value")
    ax.set_title(title)
    return fig


def label_heatmap(matrix: pd.DataFrame, title: str) -> Figure:
    """Heatmap of a rows × labels table (e.g. per-label AUROC per ablation cell), values annotated."""
    values = matrix.to_numpy(dtype=np.float64)  # (R, C)
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(6, 0.55 * n_cols + 3), max(3, 0.45 * n_rows + 2.2)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if values.size <= 600:
        finite = values[np.isfinite(values)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (r, c), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > mid else "white",
                )
    ax.set_xticks(range(n_cols), [str(c) for c in matrix.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [str(r) for r in matrix.index], fontsize=8)
    ax.set_title(title)
    return fig
