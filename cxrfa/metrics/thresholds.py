"""Decisions and calibration: val-chosen thresholds, confusion counts, F1, ECE, calibration in the large."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrfa.metrics.ranking import _check_shapes, _rank_groups

ECE_BINS = 15


def choose_thresholds(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Per-label decision threshold that maximises F1 on (validation) predictions.

    A row is predicted positive when ``prob >= threshold``; candidate thresholds are the observed scores
    and, among equal F1, the highest one wins. Labels with one class (or no known rows) get 0.5.

    Args:
        y_true: (N, C) labels, 1/0/NaN (unknown rows are ignored per label).
        y_prob: (N, C) probabilities.

    Returns:
        (C,) thresholds.
    """
    y_true, y_prob = _check_shapes(y_true, y_prob)
    thresholds = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        known = np.isfinite(y_true[:, j])
        y, p = y_true[known, j], y_prob[known, j]
        n_pos = y.sum()
        if n_pos == 0 or n_pos == y.size:
            continue
        order, starts = _rank_groups(p)
        ends = np.concatenate((starts[1:], [y.size])) - 1  # last index of each tie group
        tp = np.cumsum(y[order])[ends]  # predicted positive = this group and every higher one
        fp = (ends + 1) - tp
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        thresholds[j] = p[order][starts[int(np.argmax(f1))]]
    return thresholds


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = p >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    return tp, fp, fn, int(y.size - tp - fp - fn)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 with scikit-learn's ``zero_division=0`` convention."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over all known entries: Σ_b (n_b / n) · |mean label − mean probability| in equal-width bins."""
    known = np.isfinite(y_true)
    y, p = y_true[known].astype(np.float64), y_prob[known].astype(np.float64)
    if y.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)  # bin b = [b/n, (b+1)/n); 1.0 in the last
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins)
    )
    return float(gap.sum() / count.sum())


def calibration_in_the_large(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """Mean predicted probability against observed prevalence, over known entries.

    Returns ``max_prob`` (a collapsed model predicts ~0 everywhere), ``mean_prob/<label>`` and
    ``prevalence/<label>``, and the smallest / largest ratio of the two over labels with a positive
    (``prevalence_ratio_min`` / ``_max``; 1 is calibrated on average).
    """
    known = np.isfinite(y_true)
    out: dict[str, float] = {"max_prob": float(y_prob[known].max()) if known.any() else float("nan")}
    ratios = []
    for j, label in enumerate(labels):
        k = known[:, j]
        mean_p = float(y_prob[k, j].mean()) if k.any() else float("nan")
        prev = float(y_true[k, j].mean()) if k.any() else float("nan")
        out[f"mean_prob/{label}"], out[f"prevalence/{label}"] = mean_p, prev
        if prev > 0:
            ratios.append(mean_p / prev)
    out["prevalence_ratio_min"] = float(min(ratios)) if ratios else float("nan")
    out["prevalence_ratio_max"] = float(max(ratios)) if ratios else float("nan")
    return out
