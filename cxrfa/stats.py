"""Statistics for comparing runs: a paired bootstrap between two models, and mean ± CI over seeds."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from cxrfa.metrics import auc_ap, bootstrap_per_label, macro_over_labels

log = logging.getLogger(__name__)

PairedMetric = Literal["macro_auc", "map"]


@dataclass(frozen=True)
class PairedResult:
    """Outcome of :func:`paired_bootstrap`.

    Attributes:
        delta: metric(B) − metric(A) on the full test set.
        ci_low, ci_high: percentile 95% CI of the resampled deltas.
        p_value: two-sided bootstrap p-value for "no difference".
        n: number of resamples that produced a delta.
    """

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def _point(y_true: np.ndarray, prob: np.ndarray, metric: PairedMetric) -> float:
    """Macro AUROC or mAP over labels with both classes present (unknown entries masked)."""
    values = []
    for j in range(y_true.shape[1]):
        known = np.isfinite(y_true[:, j])
        auc, ap = auc_ap(y_true[known, j], prob[known, j])
        values.append(auc if metric == "macro_auc" else ap)
    values_arr = np.asarray(values)
    values_arr = values_arr[np.isfinite(values_arr)]
    return float(values_arr.mean()) if values_arr.size else float("nan")


def paired_bootstrap(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    metric: PairedMetric = "macro_auc",
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of the difference in a macro metric between model B and model A.

    Both models are scored on the *same* resampled rows in every resample, so per-image difficulty cancels.
    Within a resample, labels with one class present are skipped (for both models alike). The p-value is
    two-sided: the fraction of resampled deltas on the other side of 0 from the observed delta (0 included),
    with a +1 correction, doubled and capped at 1; an observed delta of exactly 0 gives p = 1.

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        prob_a: (N, C) probabilities of model A (the baseline).
        prob_b: (N, C) probabilities of model B.
        metric: ``macro_auc`` or ``map``.
        n_boot: number of resamples.
        seed: seed of ``np.random.default_rng`` (resamples depend only on N, n_boot and seed).

    Returns:
        A :class:`PairedResult` with ``delta = metric(B) − metric(A)``.

    Raises:
        ValueError: unknown metric or mismatched shapes.
    """
    if metric not in ("macro_auc", "map"):
        raise ValueError(f"metric must be 'macro_auc' or 'map', not {metric!r}")
    y_true = np.asarray(y_true, dtype=np.float64)
    prob_a = np.asarray(prob_a, dtype=np.float64)
    prob_b = np.asarray(prob_b, dtype=np.float64)
    if not (y_true.ndim == 2 and y_true.shape == prob_a.shape == prob_b.shape):
        raise ValueError(
            f"shapes differ: y_true {y_true.shape}, prob_a {prob_a.shape}, prob_b {prob_b.shape}"
        )
    delta = _point(y_true, prob_b, metric) - _point(y_true, prob_a, metric)
    pick = 0 if metric == "macro_auc" else 1
    per_a = bootstrap_per_label(y_true, prob_a, n_boot, seed)[pick]  # (B, C)
    per_b = bootstrap_per_label(y_true, prob_b, n_boot, seed)[pick]  # (B, C), same resampled rows
    deltas = macro_over_labels(per_b) - macro_over_labels(per_a)  # (B,)
    deltas = deltas[np.isfinite(deltas)]
    if not np.isfinite(delta) or deltas.size == 0:
        log.warning("paired bootstrap: %s undefined (no label with both classes present)", metric)
        return PairedResult(float("nan"), float("nan"), float("nan"), float("nan"), int(deltas.size))
    low, high = np.percentile(deltas, [2.5, 97.5])
    if delta == 0:
        p_value = 1.0
    else:
        other_side = int(np.sum(deltas <= 0)) if delta > 0 else int(np.sum(deltas >= 0))
        p_value = min(1.0, 2.0 * (other_side + 1) / (deltas.size + 1))
    return PairedResult(float(delta), float(low), float(high), p_value, int(deltas.size))


def mean_std_ci(values: list[float]) -> tuple[float, float, float, float, int]:
    """Mean, sample standard deviation and t-distribution 95% CI of a metric over seeds.

    Non-finite values (a seed whose metric was undefined) are dropped and not counted.

    Args:
        values: one value per seed.

    Returns:
        ``(mean, std, ci_low, ci_high, n)``; with n = 1 the std and CI are NaN; with n = 0 everything is NaN.
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    nan = float("nan")
    if n == 0:
        return nan, nan, nan, nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, nan, nan, nan, 1
    std = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.975, df=n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half, n
