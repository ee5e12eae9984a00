"""Statistics for comparing runs. ``compare`` uses :func:`paired_seed_test`, :func:`seed_patient_t`,
:func:`shared_patient_var`, :func:`holm` and :func:`delong_test`; the bootstrap functions before them score runs on
patient resamples (:func:`label_boot`) and serve the benchmark that measured why the seed-pair bootstrap was
replaced.

* :func:`label_boot` scores one model on the test set and on B patient resamples (a resample draws patients with
  replacement and keeps all their images; every model scored with the same seed and rows sees the same
  resamples, so differences are paired).
* :func:`paired_delta`: a two-level bootstrap over seeds and patients. Each replicate draws K seed pairs with
  replacement and scores them on that replicate's patient resample; the same patient resample serves every seed,
  because every seed is scored on the same test patients. The interval is the percentile interval of the
  replicate means, so it stays inside the metric's range.
* The p-value of a paired difference is the centred bootstrap test: p = (1 + #{|Δ*_b − Δ̂| ≥ |Δ̂|}) / (B + 1);
  its floor is 1/(B+1), shown as "≤ 1/(B+1)" (:func:`format_p`). :func:`holm` adjusts p-values within one family of
  contrasts (and the per-label p-values over labels).
* :func:`mean_std_ci`: mean, std and a 95% t-interval over seeds for metrics that only exist per run; for a
  bounded metric the interval is computed on the logit scale of its range and mapped back, so it never leaves
  the range (:func:`metric_range`).
* :func:`paired_seed_test` / :func:`seed_patient_t`: the inference ``compare`` reports. A t-interval over the
  seed (pair) values whose variance is s²/K (seed spread, which already holds each seed's own patient noise)
  plus the patient variance *shared* by all seeds (they are scored on the same test patients, so that part
  never shows in the seed spread), with Welch–Satterthwaite degrees of freedom (seed part at its 75% upper
  bound). Its type-I error stays within
  [0.03, 0.07] at α = 0.05 for 3–10 seeds and seed-SD / patient-SE ratios 0.25–4 (``benchmarks/bench_inference.py``),
  where the centred seed-pair bootstrap above reached 19.5% with 3 seeds.
* :func:`delong_test`: fast DeLong (Sun & Xu 2014) for the AUROC difference of two models on the same images;
  it reproduces pROC's published ``roc.test``, ``var`` and ``cov`` on pROC's aSAH data to 12 digits (tests).
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

from cxrfa.metrics import bootstrap_per_label, get_metric, macro_over_labels, per_label_auc_ap, percentile_ci

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
    """The range a logged metric lives in (``test/macro_auc`` -> (0, 1)); None when it is unbounded/unknown.

    A compared metric's range is its :class:`cxrfa.metrics.MetricSpec`'s; the patterns cover the per-label and
    per-subgroup keys around them.
    """
    name = key.removeprefix("test/")
    try:
        return get_metric(name).bounds
    except KeyError:
        pass
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
    """A p-value for a table: ``≤ k/(n+1)`` when it is a bootstrap floor (k = its Holm multiplier), else 3 digits.

    ``≤``, not ``<``: at the floor no replicate was as extreme, and p = k/(n+1) is itself a valid p-value.
    """
    if not math.isfinite(p):
        return "–"
    if bound:
        return f"≤ {round(p * (n + 1))}/{n + 1}"
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


# ---------------------------------------------------------------------------------------------------------
# Inference that holds with few seeds: seed spread + shared patient variance, Satterthwaite t


@dataclass(frozen=True)
class SeedTest:
    """The estimate, interval and test of a mean over seeds (or seed pairs) with seed and patient variation.

    Attributes:
        value: mean over the K seed (pair) values.
        low, high: 1 − α t-interval.
        se: its standard error: sqrt(s²/K + V_shared).
        df: Welch–Satterthwaite degrees of freedom (inf when only patient variance is known).
        p: two-sided p-value for "the mean is 0" (NaN for a non-difference).
        k: number of seeds (pairs).
        seed_var: s², the sample variance of the K values (NaN with K = 1).
        shared_var: V_shared, the patient variance common to all seeds.
        prob_improvement: share of seed pairs where the cell wins (ties ½), in the metric's better direction.
        mde: the smallest true Δ this design detects with 80% power at α (two-sided).
    """

    value: float
    low: float
    high: float
    se: float
    df: float
    p: float = float("nan")
    k: int = 0
    seed_var: float = float("nan")
    shared_var: float = float("nan")
    prob_improvement: float = float("nan")
    mde: float = float("nan")


def shared_patient_var(replicates: np.ndarray) -> float:
    """The patient variance every seed shares, from patient-bootstrap replicates on common resamples.

    Args:
        replicates: (K, B) seed k's value on patient resample b (the same B resamples for every seed).

    Returns:
        With K ≥ 2 the mean off-diagonal covariance across seeds (floored at 0): the part of the patient noise
        that all seeds share, and so the part the seed spread cannot see. With K = 1, the whole patient variance
        of that one seed. NaN without finite replicates.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[:, np.isfinite(reps).all(axis=0)]  # (K, B') resamples where every seed has a value
    k, b = reps.shape
    if b < 2 or k == 0:
        return float("nan")
    cov = np.atleast_2d(np.cov(reps))  # (K, K)
    if k == 1:
        return float(cov[0, 0])
    off = (cov.sum() - np.trace(cov)) / (k * (k - 1))
    return float(max(off, 0.0))


def seed_patient_t(
    values: Sequence[float],
    shared_var: float = 0.0,
    shared_df: float = math.inf,
    alpha: float = 0.05,
    power: float = 0.8,
    null: float | None = 0.0,
) -> SeedTest:
    """t-inference on the mean of K seed values whose variance also holds a patient part shared by all seeds.

    SE² = s²/K + V_shared; df = (u + V_shared)² / (u²/(K − 1) + V_shared²/shared_df) (Welch–Satterthwaite), where
    u = (s²/K)·(K − 1)/χ²_{K−1}(0.25) is the seed part at its 75% upper confidence bound. With V_shared = 0 this is
    the one-sample t-test (scipy's ``ttest_1samp``, df = K − 1); with K = 1 it is a normal test on the patient
    variance alone.

    Args:
        values: one value per seed (or the per-pair Δ of a contrast).
        shared_var: V_shared (:func:`shared_patient_var`); 0 when unknown (then only seed spread counts).
        shared_df: degrees of freedom of V_shared (patients − 1; inf = known).
        alpha: two-sided level of the interval and the test.
        power: target power of the minimum detectable Δ.
        null: value tested against (None: no test, e.g. a cell's mean).

    Returns:
        A :class:`SeedTest` (NaN fields when nothing finite is left).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    k = int(arr.size)
    nan = float("nan")
    if k == 0:
        return SeedTest(nan, nan, nan, nan, nan, k=0)
    shared = float(shared_var) if math.isfinite(shared_var) else 0.0
    mean = float(arr.mean())
    seed_var = float(arr.var(ddof=1)) if k > 1 else nan
    seed_part = seed_var / k if k > 1 else 0.0
    se2 = seed_part + shared
    if k == 1 and shared == 0.0:
        return SeedTest(mean, nan, nan, nan, nan, k=1, shared_var=shared)
    # Degrees of freedom from the seed variance at its 75% upper confidence bound, not its estimate: with 3 seeds a
    # spread that is small by chance otherwise claims many df and the plug-in Satterthwaite test rejects 7.7% of
    # true nulls at seed-SD / patient-SE = 4; with the bound every setting stays in [0.035, 0.052] (DESIGN.md).
    seed_up = seed_part * (k - 1) / float(sps.chi2.ppf(0.25, k - 1)) if k > 1 else 0.0
    denom = (seed_up**2 / (k - 1) if k > 1 else 0.0) + (shared**2 / shared_df if shared_df else math.inf)
    df = (seed_up + shared) ** 2 / denom if denom > 0 else math.inf
    se = math.sqrt(se2)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    p = nan
    if null is not None:
        p = float(2 * sps.t.sf(abs(mean - null) / se, df)) if se > 0 else float(mean == null)
    mde = (crit + float(sps.t.ppf(power, df))) * se
    return SeedTest(mean, mean - crit * se, mean + crit * se, se, df, p, k, seed_var, shared, nan, mde)


def prob_improvement(deltas: Sequence[float], higher_is_better: bool = True) -> float:
    """Share of seed pairs where the cell beats the other (a tie counts ½); NaN without pairs."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    d = d if higher_is_better else -d
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def paired_seed_test(
    cell: Sequence[float],
    base: Sequence[float],
    patient_var: Sequence[float] | None = None,
    *,
    replicates: np.ndarray | None = None,
    n_patients: int | None = None,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> SeedTest:
    """Paired seed-level test of a contrast cell − base from per-seed metric values.

    Pair k is seed k of both cells, scored on the same test patients. The interval and p-value come from
    :func:`seed_patient_t` on the K per-pair Δs, with the patient variance they share added:

    * ``replicates`` (K, B): each pair's Δ on B patient resamples common to all pairs; the shared part is their
      mean cross-pair covariance (:func:`shared_patient_var`);
    * else ``patient_var`` (K,): each pair's patient-bootstrap variance of Δ. Which part of it is shared is then
      unknown, so all of it is treated as shared (conservative: at most double-counts each pair's own patient
      noise, which the seed spread already holds);
    * neither: seed spread only (the plain paired t-test, scipy's ``ttest_rel``).

    Args:
        cell, base: (K,) the metric per seed, pair k = (cell[k], base[k]).
        patient_var: (K,) per-pair patient variance of Δ (optional).
        replicates: (K, B) per-pair Δ on common patient resamples (optional; wins over ``patient_var``).
        n_patients: test patients (degrees of freedom of the patient variance); None = treated as known.
        higher_is_better: the metric's direction, for the probability of improvement.
        alpha: two-sided level.

    Returns:
        A :class:`SeedTest` with ``prob_improvement`` and ``mde`` filled in.

    Raises:
        ValueError: cell and base differ in length, or the variances do not match the pairs.
    """
    c, b = np.asarray(cell, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if c.shape != b.shape or c.ndim != 1:
        raise ValueError(f"cell {c.shape} and base {b.shape} must be the same (K,) shape")
    deltas = c - b  # (K,)
    shared = 0.0
    if replicates is not None:
        reps = np.asarray(replicates, dtype=np.float64)
        if reps.ndim != 2 or reps.shape[0] != deltas.size:
            raise ValueError(f"replicates {reps.shape} must be (K={deltas.size}, B)")
        shared = shared_patient_var(reps[np.isfinite(deltas)])
    elif patient_var is not None:
        var = np.asarray(patient_var, dtype=np.float64)
        if var.shape != deltas.shape:
            raise ValueError(f"patient_var {var.shape} must be ({deltas.size},)")
        finite = var[np.isfinite(var) & np.isfinite(deltas)]
        shared = float(finite.mean()) if finite.size else 0.0
    df = (n_patients - 1) if n_patients and n_patients > 1 else math.inf
    res = seed_patient_t(deltas, shared, df, alpha)
    return SeedTest(
        res.value,
        res.low,
        res.high,
        res.se,
        res.df,
        res.p,
        res.k,
        res.seed_var,
        res.shared_var,
        prob_improvement(deltas, higher_is_better),
        res.mde,
    )


# ---------------------------------------------------------------------------------------------------------
# DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """(n,) 1-based ranks of ``x`` with ties given their mean rank."""
    return sps.rankdata(x, method="average")


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, float, float]:
    """DeLong's test of AUROC(b) − AUROC(a) for two models scored on the same images (Sun & Xu 2014).

    The structural components come from midranks, O(n log n): V10_i = (R_i − R^pos_i)/n (one per positive),
    V01_j = 1 − (R_j − R^neg_j)/m (one per negative), with R the rank among all scores and R^pos / R^neg the
    rank among positives / negatives; var(Δ) = c·S10·c/m + c·S01·c/n with c = (−1, 1).

    Args:
        y: (N,) 0/1 labels (no unknowns).
        score_a, score_b: (N,) scores of the two models.

    Returns:
        ``(delta, se, p)``: AUROC(b) − AUROC(a), its DeLong standard error and two-sided normal p-value
        (NaN when a class is missing; p = 1 when both models rank identically).
    """
    y = np.asarray(y, dtype=np.float64)
    scores = np.vstack([score_a, score_b]).astype(np.float64)  # (2, N)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return nan, nan, nan
    v10, v01, auc = [], [], []
    for s in scores:
        r_all = _midranks(s)
        r_pos, r_neg = _midranks(s[pos]), _midranks(s[neg])
        auc.append((r_all[pos].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((r_all[pos] - r_pos) / n)  # (m,) share of negatives each positive beats
        v01.append(1 - (r_all[neg] - r_neg) / m)  # (n,) share of positives that beat each negative
    s10 = np.atleast_2d(np.cov(np.vstack(v10))) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(np.vstack(v01))) if n > 1 else np.zeros((2, 2))
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    delta = float(auc[1] - auc[0])
    if var <= 0:
        return delta, 0.0, 1.0 if delta == 0 else 0.0
    se = math.sqrt(var)
    return delta, se, float(2 * sps.norm.sf(abs(delta) / se))


def delong_var(y: np.ndarray, score: np.ndarray) -> float:
    """DeLong variance of one model's AUROC (the diagonal of the covariance :func:`delong_test` uses)."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        return float("nan")
    r_all = _midranks(s)
    v10 = (r_all[pos] - _midranks(s[pos])) / n
    v01 = 1 - (r_all[neg] - _midranks(s[neg])) / m
    return float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
