"""Statistics for comparing runs.

* :func:`label_boot` scores one model on the test set and on B patient resamples (a resample draws patients with
  replacement and keeps all their images; every model scored with the same seed and rows sees the same
  resamples, so differences are paired).
* :func:`seed_patient_mean` / :func:`paired_delta`: a two-level bootstrap over seeds and patients. Each replicate
  draws K seeds (or seed pairs) with replacement and scores them on that replicate's patient resample; the same
  patient resample serves every seed, because every seed is scored on the same test patients. The interval is
  the percentile interval of the replicate means, so it stays inside the metric's range.
* The p-value of a paired difference is the centred bootstrap test: p = (1 + #{|Δ*_b − Δ̂| ≥ |Δ̂|}) / (B + 1);
  its floor is 1/(B+1), shown as "< 1/(B+1)" (:func:`format_p`). :func:`holm` adjusts p-values across the cells
  tested against one baseline.
* :func:`mean_std_ci`: mean, std and a 95% t-interval over seeds for metrics that only exist per run; for a
  bounded metric the interval is computed on the logit scale of its range and mapped back, so it never leaves
  the range (:func:`metric_range`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from cxrfa.metrics import bootstrap_per_label, macro_over_labels, per_label_auc_ap, percentile_ci

log = logging.getLogger(__name__)

PairedMetric = Literal["macro_auc", "map"]
_LOGIT_EPS = 1e-6  # values at a bound are moved this far inside before the logit

# metric key (without the ``test/`` prefix) -> the range it lives in
_RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    (r"fair/[^/]+/tpr_gap/.+", (-1.0, 1.0)),
    (r"embed/mean_offdiag_sim(/.*)?", (-1.0, 1.0)),
    (r"embed/modality_gap", (0.0, 2.0)),  # distance between the means of unit vectors
    (r"(macro_auc|micro_auc|map|macro_f1|mse|ece)(_.*)?", (0.0, 1.0)),
    (r"(auc|ap|f1)/.+", (0.0, 1.0)),
    (r"fair/worst_tpr_gap|fair/[^/]+/(auc|tpr)/.+", (0.0, 1.0)),
)


def metric_range(key: str) -> tuple[float, float] | None:
    """The range a logged metric lives in (``test/macro_auc`` -> (0, 1)); None when it is unbounded/unknown."""
    name = key.removeprefix("test/")
    for pattern, bounds in _RANGES:
        if re.fullmatch(pattern, name):
            return bounds
    return None


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% interval and, for a difference, its two-sided bootstrap p-value.

    Attributes:
        value: the estimate on the full test set (a mean over seeds, or a difference).
        low, high: percentile 95% interval of the bootstrap replicates.
        p: two-sided p-value for "no difference" (NaN for a non-difference).
        n: number of replicates that produced a value.
        at_floor: True when no replicate was as extreme as 0, so ``p`` is its floor 1/(n+1).
    """

    value: float
    low: float
    high: float
    p: float = float("nan")
    n: int = 0
    at_floor: bool = False


@dataclass(frozen=True)
class BootScores:
    """A macro metric of one model (or one difference) on the test set and on each patient resample."""

    point: float
    boot: np.ndarray  # (B,)


@dataclass(frozen=True)
class LabelBoot:
    """Per-label AUROC and AP of one model on the test set and on B patient resamples.

    Attributes:
        auc, ap: (C,) on the full test set (NaN for a label with one class present).
        boot_auc, boot_ap: (B, C) on each resample.
    """

    auc: np.ndarray
    ap: np.ndarray
    boot_auc: np.ndarray
    boot_ap: np.ndarray

    def macro(self, metric: PairedMetric) -> BootScores:
        """Macro AUROC or mAP over the labels with both classes in the full test set."""
        point, boot = (self.auc, self.boot_auc) if metric == "macro_auc" else (self.ap, self.boot_ap)
        include = np.isfinite(self.auc)
        value = float(point[include].mean()) if include.any() else float("nan")
        return BootScores(value, macro_over_labels(boot, include))


def label_boot(
    y_true: np.ndarray, prob: np.ndarray, n_boot: int, seed: int = 0, patients: Sequence[object] | None = None
) -> LabelBoot:
    """Score one model on the test set and on ``n_boot`` patient resamples.

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        prob: (N, C) probabilities.
        n_boot: number of resamples.
        seed: seed of the patient resamples (same seed + same rows = same resamples for every model).
        patients: (N,) patient id per row; None = each row is its own patient.

    Raises:
        ValueError: mismatched shapes.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    if not (y_true.ndim == 2 and y_true.shape == prob.shape):
        raise ValueError(f"shapes differ: y_true {y_true.shape}, prob {prob.shape}")
    auc, ap = per_label_auc_ap(y_true, prob)
    boot_auc, boot_ap = bootstrap_per_label(y_true, prob, n_boot, seed, patients)
    return LabelBoot(auc, ap, boot_auc, boot_ap)


def seed_draws(n_boot: int, k: int, seed: int = 0) -> np.ndarray:
    """(B, k) seed indices drawn with replacement, from ``np.random.default_rng([seed, 1])``.

    A stream of its own, so the patient resamples (``default_rng(seed)``) are the same whatever ``k`` is.
    """
    return np.random.default_rng([seed, 1]).integers(0, k, size=(n_boot, k))


def hierarchical_replicates(per_seed: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """Replicate means of a seed-then-patient bootstrap.

    Args:
        per_seed: K arrays (B,): one seed's (or seed pair's) value on each patient resample.
        seed: seed of the seed draws (:func:`seed_draws`).

    Returns:
        (B,) mean over the K seeds drawn for replicate b of their values on patient resample b.
    """
    values = np.stack(per_seed)  # (K, B)
    k, n_boot = values.shape
    draws = seed_draws(n_boot, k, seed)  # (B, K)
    return values[draws, np.arange(n_boot)[:, None]].mean(axis=1)


def centred_p(replicates: np.ndarray, observed: float) -> tuple[float, int, bool]:
    """Two-sided bootstrap p-value of an observed difference: (1 + #{|Δ* − Δ̂| ≥ |Δ̂|}) / (n + 1).

    Returns:
        ``(p, n, at_floor)``: n finite replicates; ``at_floor`` when no replicate counted (p = 1/(n+1)).
        An observed difference of exactly 0 gives p = 1.
    """
    reps = replicates[np.isfinite(replicates)]
    if not math.isfinite(observed) or reps.size == 0:
        return float("nan"), int(reps.size), False
    extreme = int(np.sum(np.abs(reps - observed) >= abs(observed)))
    return (extreme + 1) / (reps.size + 1), int(reps.size), extreme == 0


def seed_patient_mean(scores: Sequence[BootScores], seed: int = 0) -> Estimate:
    """Mean over seeds of a metric, with a 95% interval that includes seed and patient variation."""
    value = float(np.mean([s.point for s in scores]))
    reps = hierarchical_replicates([s.boot for s in scores], seed)
    low, high = percentile_ci(reps)
    return Estimate(value, low, high, n=int(np.isfinite(reps).sum()))


def paired_delta(cell: Sequence[BootScores], base: Sequence[BootScores], seed: int = 0) -> Estimate:
    """Mean per-seed-pair difference cell − baseline, its seed-and-patient interval and p-value.

    Pair k is seed k of the cell with seed k of the baseline, scored on the same test images and the same
    patient resamples. With one pair, only patient variation is included.

    Raises:
        ValueError: no pairs, or the two lists differ in length.
    """
    if not cell or len(cell) != len(base):
        raise ValueError(
            f"need the same number (>0) of cell and baseline seeds, got {len(cell)} and {len(base)}"
        )
    diffs = [BootScores(c.point - b.point, c.boot - b.boot) for c, b in zip(cell, base, strict=True)]
    value = float(np.mean([d.point for d in diffs]))
    reps = hierarchical_replicates([d.boot for d in diffs], seed)
    low, high = percentile_ci(reps)
    p, n, floor = centred_p(reps, value)
    return Estimate(value, low, high, p, n, floor)


def paired_bootstrap(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    metric: PairedMetric = "macro_auc",
    n_boot: int = 1000,
    seed: int = 0,
    patients: Sequence[object] | None = None,
) -> Estimate:
    """Paired patient bootstrap of metric(B) − metric(A) for two models scored on the same test images.

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        prob_a: (N, C) probabilities of model A (the baseline).
        prob_b: (N, C) probabilities of model B.
        metric: ``macro_auc`` or ``map``.
        n_boot: number of resamples.
        seed: seed of the patient resamples.
        patients: (N,) patient id per row; None = each row is its own patient.

    Raises:
        ValueError: unknown metric or mismatched shapes.
    """
    if metric not in ("macro_auc", "map"):
        raise ValueError(f"metric must be 'macro_auc' or 'map', not {metric!r}")
    prob_a, prob_b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    if prob_a.shape != prob_b.shape:
        raise ValueError(f"shapes differ: prob_a {prob_a.shape}, prob_b {prob_b.shape}")
    a = label_boot(y_true, prob_a, n_boot, seed, patients).macro(metric)
    b = label_boot(y_true, prob_b, n_boot, seed, patients).macro(metric)
    if not math.isfinite(a.point):
        log.warning("paired bootstrap: %s undefined (no label with both classes present)", metric)
        return Estimate(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    return paired_delta([b], [a], seed)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes max_{j≤i} min(1, (m − j + 1)·p_(j)).

    NaN entries are not tests: they stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="mergesort")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m,)
    out[order] = np.maximum.accumulate(scaled)
    return out


def holm_at_floor(p_values: Sequence[float], at_floor: Sequence[bool]) -> np.ndarray:
    """Which Holm-adjusted p-values are set by a raw p-value at its bootstrap floor (so they are bounds)."""
    p = np.asarray(p_values, dtype=np.float64)
    floor = np.asarray(at_floor, dtype=bool)
    out = np.zeros(p.shape, dtype=bool)
    tested = np.flatnonzero(np.isfinite(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="mergesort")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    best = 0
    for i in range(m):  # the running maximum's source decides
        if scaled[i] > scaled[best]:
            best = i
        out[order[i]] = floor[order[best]] and scaled[best] < 1.0
    return out


def format_p(p: float, n: int, bound: bool) -> str:
    """A p-value for a table: ``< k/(n+1)`` when it is a bootstrap floor (k = its Holm multiplier), else 3 digits."""
    if not math.isfinite(p):
        return "–"
    if bound:
        return f"< {round(p * (n + 1))}/{n + 1}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def mean_std_ci(
    values: Sequence[float], bounds: tuple[float, float] | None = None
) -> tuple[float, float, float, float, int]:
    """Mean, sample standard deviation and 95% t-interval of a metric over seeds.

    Non-finite values (a seed whose metric was undefined) are dropped and not counted. With ``bounds`` the
    interval is a t-interval of logit((x − lo)/(hi − lo)) mapped back, so it stays inside (lo, hi).

    Args:
        values: one value per seed.
        bounds: the metric's range, e.g. (0, 1) for AUROC (see :func:`metric_range`).

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
    t = float(sps.t.ppf(0.975, df=n - 1))
    if bounds is None:
        half = t * std / math.sqrt(n)
        return mean, std, mean - half, mean + half, n
    lo, hi = bounds
    unit = np.clip((arr - lo) / (hi - lo), _LOGIT_EPS, 1 - _LOGIT_EPS)
    z = np.log(unit / (1 - unit))  # (n,) logit
    half = t * float(z.std(ddof=1)) / math.sqrt(n)
    back = 1 / (1 + np.exp(-(float(z.mean()) + np.array([-half, half]))))  # (2,) in (0, 1)
    return mean, std, float(lo + (hi - lo) * back[0]), float(lo + (hi - lo) * back[1]), n
