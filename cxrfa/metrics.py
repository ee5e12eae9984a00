"""Predictions + labels → metrics: AUROC, AP, F1, calibration, long-tail groups, bootstrap CIs, fairness gaps.

Everything is plain numpy. Labels are an ``(N, C)`` float array holding 1, 0 or NaN (= unknown); unknown
entries are masked out of every metric. AUROC and average precision are computed from the ranks of the
scores with ties grouped, exactly as scikit-learn defines them, but with per-row *weights* so that a bootstrap
resample (rows drawn with replacement) is just a vector of row counts: the scores are sorted once per label
and every resample reuses that order.

Definitions (CheXclusion-style where it applies):

* per label: AUROC/AP/F1 on the rows where the label is known; a label with one class present gets NaN
  AUROC/AP and is left out of the macro averages (with a logged warning);
* ``macro_auc``/``map``/``macro_f1``: mean over labels with both classes present;
* ``micro_auc``: AUROC of all known (row, label) pairs flattened; ``mse``: mean squared error of the
  probabilities over known entries; ``ece``: 15 equal-width bins over known entries;
* decisions are ``prob >= threshold``: per-label thresholds chosen on *val* to maximise F1
  (:func:`choose_thresholds`), or 0.5 when none are given;
* bootstrap: percentile 95% CIs from patient (cluster) resamples: a resample draws patients with replacement
  and keeps every image of each drawn patient (images of one patient are not independent); without patient
  ids each image is its own cluster. Within a resample, a label with one class present is skipped and the
  macro is the mean over the remaining labels;
* fairness: per subgroup of sex, age bin and view, macro AUROC, mean TPR and a TPR gap (``_fairness``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrfa.data.ages import AGE_BINS, age_bins

log = logging.getLogger(__name__)

ECE_BINS = 15
SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("sex", "age", "view")
LABEL_GROUPS: tuple[str, ...] = ("head", "medium", "tail")
_BOOT_CHUNK = 50  # resamples held in memory at once: (chunk, N) row-count matrix


@dataclass
class MetricsResult:
    """Everything :func:`compute_metrics` measures.

    Attributes:
        scalars: flat metric name → value (NaN where undefined), ready for a tracker or ``metrics.json``.
        per_label: one row per label: label, n_pos, n_neg, auc, ap, f1, threshold, tp, fp, fn, tn, group.
        confusion: label → 2x2 counts ``[[tn, fp], [fn, tp]]`` at the label's threshold.
        thresholds_from_val: True when thresholds were chosen on validation predictions, False for 0.5.
        labels: label names, in column order.
        y_true: (N, C) labels the metrics were computed from (1/0/NaN), kept for plotting.
        y_prob: (N, C) predicted probabilities, kept for plotting.
    """

    scalars: dict[str, float]
    per_label: pd.DataFrame
    confusion: dict[str, np.ndarray]
    thresholds_from_val: bool
    labels: list[str] = field(default_factory=list)
    y_true: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    y_prob: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)


# ---------------------------------------------------------------------------------------------------------
# Ranking metrics with row weights (weights = 1 for the point estimate, row counts for a bootstrap resample)


def _rank_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending sort order of ``score`` and the start index of each run of tied scores."""
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(s) != 0) + 1))
    return order, starts


def _weighted_auc_ap(
    y_sorted: np.ndarray, w: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP for each row of weights.

    Args:
        y_sorted: (n,) 0/1 labels in descending-score order.
        w: (B, n) non-negative row weights in the same order.
        starts: (G,) start index of each tie group.

    Returns:
        auc, ap: (B,) each; NaN where the weighted data has a single class.
    """
    gp = np.add.reduceat(w * y_sorted, starts, axis=1)  # (B, G) positive weight per tie group
    gn = np.add.reduceat(w, starts, axis=1) - gp  # (B, G) negative weight per tie group
    cp, cn = np.cumsum(gp, axis=1), np.cumsum(gn, axis=1)  # (B, G) weight at or above each group
    n_pos, n_neg = cp[:, -1], cn[:, -1]  # (B,)
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Each negative beats every positive ranked strictly above it; ties count one half.
        auc = (gn * (cp - 0.5 * gp)).sum(axis=1) / (n_pos * n_neg)
        # Where nothing is ranked at or above a group yet, cp = 0 too: precision 0 there, and gp = 0 anyway.
        precision = cp / np.maximum(cp + cn, 1e-300)  # (B, G)
        ap = (gp * precision).sum(axis=1) / n_pos
    return np.where(valid, auc, np.nan), np.where(valid, ap, np.nan)


def auc_ap(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """AUROC and average precision of one binary label (no unknowns); NaN for both if one class is present."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if y.size == 0:
        return float("nan"), float("nan")
    order, starts = _rank_groups(score)
    auc, ap = _weighted_auc_ap(y[order], np.ones((1, y.size)), starts)
    return float(auc[0]), float(ap[0])


def per_label_auc_ap(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP of each label over the rows where it is known.

    Args:
        y_true: (N, C) with 1, 0 or NaN (unknown, masked out).
        scores: (N, C) higher = more likely positive.

    Returns:
        auc, ap: (C,) each; NaN for a label without both classes among its known rows.

    Raises:
        ValueError: the shapes differ or are not (N, C).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must both be (N, C)")
    auc, ap = np.full(y_true.shape[1], np.nan), np.full(y_true.shape[1], np.nan)
    for j in range(y_true.shape[1]):
        known = np.isfinite(y_true[:, j])
        auc[j], ap[j] = auc_ap(y_true[known, j], scores[known, j])
    return auc, ap


def masked_auc(
    y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str] | None = None
) -> tuple[dict[str, float], float]:
    """Per-label AUROC on known entries (:func:`per_label_auc_ap`) and their macro mean.

    Args:
        y_true: (N, C) with 1, 0 or NaN (unknown, masked out).
        scores: (N, C) higher = more likely positive (cosines, logits or probabilities).
        labels: C names for the result keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``({label: auc}, macro)``; a label without both classes among its known rows gets NaN and is left out
        of the macro mean; the macro is NaN when no label qualifies.
    """
    auc, _ = per_label_auc_ap(y_true, scores)
    names = list(labels) if labels is not None else [str(j) for j in range(auc.size)]
    if len(names) != auc.size:
        raise ValueError(f"{len(names)} label names for {auc.size} columns")
    return {name: float(v) for name, v in zip(names, auc, strict=True)}, _nanmean(auc)


def cluster_codes(groups: np.ndarray | pd.Series | list | None, n: int) -> np.ndarray:
    """(N,) integer cluster code per row: the index of the row's id among the sorted unique ids.

    ``None`` makes every row its own cluster (an image-level bootstrap).

    Raises:
        ValueError: ``groups`` does not have ``n`` entries, or an id is missing (NaN/empty).
    """
    if groups is None:
        return np.arange(n)
    ids = pd.Series(np.asarray(groups, dtype=object)).astype("string")
    if len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} rows")
    if ids.isna().any() or (ids.str.strip() == "").any():
        raise ValueError("a patient id is missing; every row needs one for a patient-level bootstrap")
    _, codes = np.unique(ids.to_numpy(dtype=str), return_inverse=True)
    return codes.astype(np.int64)


def _row_counts(codes: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (b, N) row-count matrices, ``n_boot`` resamples in all, of a cluster (patient) bootstrap.

    Each resample draws G clusters with replacement from the G clusters of ``codes`` (``np.random.default_rng(seed)``,
    ``integers(0, G, size=(b, G))`` per chunk of b resamples) and takes every row of each drawn cluster, so a row's
    count is how many times its cluster was drawn. With one row per cluster this is the plain row bootstrap.

    Args:
        codes: (N,) cluster code of each row, in ``0..G-1`` (see :func:`cluster_codes`).
        n_boot: number of resamples.
        seed: seed of the generator.
    """
    rng = np.random.default_rng(seed)
    g = int(codes.max()) + 1 if codes.size else 0
    done = 0
    while done < n_boot:
        b = min(_BOOT_CHUNK, n_boot - done)
        idx = rng.integers(0, g, size=(b, g))  # (b, G) clusters drawn with replacement
        flat = (idx + np.arange(b)[:, None] * g).ravel()
        per_cluster = np.bincount(flat, minlength=b * g).reshape(b, g)  # (b, G) draws of each cluster
        yield per_cluster[:, codes].astype(np.float64)  # (b, N): every row of a drawn cluster, as often
        done += b


def _stratified_row_counts(
    codes: np.ndarray, strata: np.ndarray, n_boot: int, seed: Sequence[int]
) -> Iterator[np.ndarray]:
    """Yield (b, N) row-count matrices, ``n_boot`` resamples in all, of a cluster bootstrap inside each stratum.

    A cluster is one patient's rows in one stratum (a patient whose images fall in two age bins is a cluster in
    each). Each resample draws, in every stratum, as many of its clusters as it has, with replacement
    (``np.random.default_rng(seed)``; per chunk, strata in code order), so every stratum keeps its size and its
    replicates vary only with its own patients. Rows of no stratum (code −1, unknown) get 0.

    Args:
        codes: (N,) cluster (patient) code of each row (:func:`cluster_codes`).
        strata: (N,) stratum code of each row, −1 for none.
        n_boot: number of resamples.
        seed: seed of the generator (a stream of its own per stratification).
    """
    rng = np.random.default_rng(list(seed))
    known = strata >= 0
    n_codes = int(codes.max()) + 1 if codes.size else 1
    pair = strata[known].astype(np.int64) * n_codes + codes[known]  # (n_known,) one id per (stratum, patient)
    unique, cluster = np.unique(pair, return_inverse=True)  # (K,), (n_known,) cluster of each known row
    members = [
        np.flatnonzero(unique // n_codes == g) for g in np.unique(unique // n_codes)
    ]  # clusters per stratum
    done = 0
    while done < n_boot:
        b = min(_BOOT_CHUNK, n_boot - done)
        per_cluster = np.zeros((b, unique.size))  # (b, K) draws of each cluster
        for m in members:
            idx = rng.integers(0, m.size, size=(b, m.size))  # (b, K_g) the stratum's clusters drawn
            flat = (idx + np.arange(b)[:, None] * m.size).ravel()
            per_cluster[:, m] = np.bincount(flat, minlength=b * m.size).reshape(b, m.size)
        counts = np.zeros((b, strata.size))
        counts[:, known] = per_cluster[:, cluster]  # every row of a drawn cluster, as often
        yield counts
        done += b


def bootstrap_per_label(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_boot: int,
    seed: int = 0,
    groups: np.ndarray | pd.Series | list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label AUROC and AP on ``n_boot`` cluster resamples (patients, or rows when ``groups`` is None).

    The resamples depend only on ``(groups, n_boot, seed)``, so two models scored with the same seed and the
    same rows see the same resamples (the basis of the paired tests in :mod:`cxrfa.stats`).

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        y_prob: (N, C) scores.
        n_boot: number of resamples.
        seed: seed for ``np.random.default_rng``.
        groups: (N,) patient id of each row; a resample draws patients and keeps all their images.

    Returns:
        auc, ap: (n_boot, C) each; NaN where the label has one class in that resample.
    """
    n, c = y_true.shape
    codes = cluster_codes(groups, n)
    known = np.isfinite(y_true)
    prepared = []
    for j in range(c):
        rows = np.flatnonzero(known[:, j])
        order, starts = _rank_groups(y_prob[rows, j].astype(np.float64))
        prepared.append((rows[order], y_true[rows[order], j].astype(np.float64), starts))
    aucs, aps = [], []
    for counts in _row_counts(codes, n_boot, seed):  # (b, N)
        auc_chunk = np.full((counts.shape[0], c), np.nan)
        ap_chunk = np.full((counts.shape[0], c), np.nan)
        for j, (rows, y_sorted, starts) in enumerate(prepared):
            if rows.size:
                auc_chunk[:, j], ap_chunk[:, j] = _weighted_auc_ap(y_sorted, counts[:, rows], starts)
        aucs.append(auc_chunk)
        aps.append(ap_chunk)
    if not aucs:
        return np.zeros((0, c)), np.zeros((0, c))
    return np.concatenate(aucs), np.concatenate(aps)


def macro_over_labels(per_label: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Row-wise mean over finite entries of a (B, C) array (optionally only ``include`` columns); NaN if none."""
    values = per_label if include is None else per_label[:, include]
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval of the finite samples (NaN, NaN when none); stays inside the samples' range."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------
# Thresholds, F1, calibration


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


# ---------------------------------------------------------------------------------------------------------
# Fairness


def _safe_name(value: object) -> str:
    """A subgroup value as a metric-key segment (MLflow allows only ``[\\w.\\- ]`` besides ``/``)."""
    return re.sub(r"[^\w.\- ]", "_", str(value)).strip() or "unknown"


def _group_codes(subgroups: pd.DataFrame, attr: str) -> pd.Series:
    """Per-row subgroup name for one attribute (age binned); NaN where unknown."""
    column = subgroups[attr]
    if attr == "age":
        return age_bins(column)
    values = column.astype(object).where(column.notna(), np.nan)
    values = values.map(
        lambda v: np.nan if (isinstance(v, str) and not v.strip()) or pd.isna(v) else _safe_name(v)
    )
    return values


def _tpr(y_true: np.ndarray, pred: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C,) TPR over ``rows`` among known positives; NaN for labels without positives there."""
    pos = y_true[rows] == 1  # (n, C), unknown (NaN) compares False
    n_pos = pos.sum(axis=0)
    hits = (pos & pred[rows]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, hits / np.maximum(n_pos, 1), np.nan)


def _fairness(
    y_true: np.ndarray, y_prob: np.ndarray, pred: np.ndarray, subgroups: pd.DataFrame
) -> dict[str, float]:
    """Per-subgroup macro AUROC, mean TPR and TPR gap for sex, age and view; plus the worst |gap|.

    Sex: gap = TPR(group) − TPR(rows of the other groups). Age bins and view: gap = TPR(group) − median TPR
    over groups. Per-label gaps are averaged over the labels with positives in the group (and, for sex, in
    the other group).
    """
    out: dict[str, float] = {}
    gaps: list[float] = []
    for attr in SUBGROUP_ATTRIBUTES:
        if attr not in subgroups.columns:
            continue
        codes = _group_codes(subgroups.reset_index(drop=True), attr)
        names = (
            [n for n in AGE_BINS if (codes == n).any()] if attr == "age" else sorted(codes.dropna().unique())
        )
        if not names:
            continue
        rows_of = {g: np.flatnonzero((codes == g).to_numpy()) for g in names}
        tpr_of = {g: _tpr(y_true, pred, rows) for g, rows in rows_of.items()}
        median = None
        if attr != "sex":
            stacked = np.vstack(list(tpr_of.values()))  # (G, C), NaN where a group has no positives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN label columns → NaN
                median = np.nanmedian(stacked, axis=0)  # (C,)
        any_known = np.flatnonzero(codes.notna().to_numpy())
        for g in names:
            rows = rows_of[g]
            out[f"fair/{attr}/auc/{g}"] = _nanmean(per_label_auc_ap(y_true[rows], y_prob[rows])[0])
            out[f"fair/{attr}/tpr/{g}"] = _nanmean(tpr_of[g])
            if attr == "sex":
                reference = _tpr(y_true, pred, np.setdiff1d(any_known, rows)) if len(names) > 1 else None
            else:
                reference = median
            if reference is None:
                continue
            gap = _nanmean(tpr_of[g] - reference)
            out[f"fair/{attr}/tpr_gap/{g}"] = gap
            if np.isfinite(gap):
                gaps.append(abs(gap))
    out["fair/worst_tpr_gap"] = max(gaps) if gaps else float("nan")
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


# ---------------------------------------------------------------------------------------------------------
# The entry point


def _check_shapes(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_prob.shape:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must be the same (N, C) shape")
    return y_true, y_prob


def compute_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray | None = None,
    subgroups: pd.DataFrame | None = None,
    label_groups: dict[str, str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    patients: np.ndarray | pd.Series | list | None = None,
) -> MetricsResult:
    """Every metric of one set of predictions (see the module docstring for definitions).

    Args:
        y_true: (N, C) labels, 1/0/NaN (unknown).
        y_prob: (N, C) probabilities in [0, 1].
        labels: C label names (metric keys use them verbatim).
        thresholds: (C,) per-label decision thresholds chosen on val; None → 0.5 (logged).
        subgroups: N rows aligned with ``y_true``, columns ``sex``, ``age``, ``view`` (any may be absent).
        label_groups: label → ``head``/``medium``/``tail`` (train prevalence) for long-tail macros.
        n_boot: bootstrap resamples for the CIs of ``macro_auc`` and ``map``; 0 → NaN CIs.
        seed: seed of the bootstrap.
        patients: (N,) patient id of each row: the bootstrap resamples patients, keeping all their images;
            None → each row is its own cluster (only right when every patient has one image).

    Returns:
        A :class:`MetricsResult`.

    Raises:
        ValueError: shapes or lengths disagree, or a probability is NaN/inf where the label is known.
    """
    y_true, y_prob = _check_shapes(y_true, y_prob)
    n, c = y_true.shape
    if len(labels) != c:
        raise ValueError(f"{len(labels)} label names for {c} columns")
    from_val = thresholds is not None
    if thresholds is None:
        # DEBUG, not INFO: the trainer scores val every epoch without thresholds; evaluate says it at INFO.
        log.debug("no thresholds given: using 0.5 for every label (F1, confusion, TPR)")
        thresholds = np.full(c, 0.5)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (c,):
        raise ValueError(f"thresholds has shape {thresholds.shape}, expected ({c},)")
    if subgroups is not None and len(subgroups) != n:
        raise ValueError(f"subgroups has {len(subgroups)} rows, predictions {n}")
    if patients is not None and len(patients) != n:
        raise ValueError(f"patients has {len(patients)} rows, predictions {n}")

    known = np.isfinite(y_true)
    if not np.isfinite(y_prob[known]).all():
        raise ValueError(
            "y_prob has NaN/inf where the label is known (a diverged model?); metrics would be wrong"
        )
    pred = (y_prob >= thresholds[None, :]) & known  # (N, C) decisions on known entries
    rows, confusion = [], {}
    aucs, aps = per_label_auc_ap(y_true, y_prob)  # (C,) each
    for j, label in enumerate(labels):
        y, p = y_true[known[:, j], j], y_prob[known[:, j], j]
        auc, ap = float(aucs[j]), float(aps[j])
        tp, fp, fn, tn = _confusion(y, p, thresholds[j])
        confusion[label] = np.array([[tn, fp], [fn, tp]])
        f1 = _f1(tp, fp, fn) if y.size else float("nan")
        group = (label_groups or {}).get(label, "")
        rows.append(
            (
                label,
                int((y == 1).sum()),
                int((y == 0).sum()),
                auc,
                ap,
                f1,
                thresholds[j],
                tp,
                fp,
                fn,
                tn,
                group,
            )
        )
    per_label = pd.DataFrame(
        rows,
        columns=["label", "n_pos", "n_neg", "auc", "ap", "f1", "threshold", "tp", "fp", "fn", "tn", "group"],
    )
    evaluable = per_label["auc"].notna().to_numpy()
    if not evaluable.all():
        single = [
            f"{lab} ({p}+/{q}-)"
            for lab, p, q, ok in zip(
                per_label["label"], per_label["n_pos"], per_label["n_neg"], evaluable, strict=True
            )
            if not ok
        ]
        log.warning(
            "label(s) with one class present, AUROC/AP undefined and left out of macros: %s",
            ", ".join(single),
        )

    scalars: dict[str, float] = {}
    scalars["macro_auc"] = _nanmean(per_label["auc"].to_numpy())
    flat_y, flat_p = y_true[known], y_prob[known]
    scalars["micro_auc"] = auc_ap(flat_y, flat_p)[0]
    scalars["map"] = _nanmean(per_label["ap"].to_numpy())
    scalars["mse"] = float(np.mean((flat_p - flat_y) ** 2)) if flat_y.size else float("nan")
    scalars["macro_f1"] = _nanmean(per_label["f1"].to_numpy()[evaluable])
    scalars["ece"] = expected_calibration_error(y_true, y_prob)
    scalars.update(calibration_in_the_large(y_true, y_prob, labels))
    for key in ("auc", "ap", "f1"):
        for label, value in zip(labels, per_label[key], strict=True):
            scalars[f"{key}/{label}"] = float(value)
    if label_groups:
        for group in LABEL_GROUPS:
            members = per_label["group"].to_numpy() == group
            if members.any():
                scalars[f"macro_auc_{group}"] = _nanmean(per_label["auc"].to_numpy()[members])
                scalars[f"map_{group}"] = _nanmean(per_label["ap"].to_numpy()[members])

    ci = {"macro_auc": (float("nan"), float("nan")), "map": (float("nan"), float("nan"))}
    if n_boot > 0 and evaluable.any():
        boot_auc, boot_ap = bootstrap_per_label(y_true, y_prob, n_boot, seed, patients)  # (B, C) each
        ci["macro_auc"] = percentile_ci(macro_over_labels(boot_auc, evaluable))
        ci["map"] = percentile_ci(macro_over_labels(boot_ap, evaluable))
    for key, (low, high) in ci.items():
        scalars[f"{key}_ci_low"], scalars[f"{key}_ci_high"] = low, high

    if subgroups is not None:
        scalars.update(_fairness(y_true, y_prob, pred, subgroups))
    return MetricsResult(scalars, per_label, confusion, from_val, list(labels), y_true, y_prob)


# ---------------------------------------------------------------------------------------------------------
# Compared metrics: one declaration each, scored under row weights (1 = the test set, counts = a resample)


@dataclass
class Weighted:
    """One model's test predictions under a batch of b row weightings: what every compared metric reads.

    Attributes:
        y: (N, C) labels, 1/0/NaN.
        prob: (N, C) probabilities.
        w: (b, N) row weights (ones for the test set; patient-resample counts for a bootstrap replicate).
        include: (C,) labels with both classes on the full test set (the macro averages' labels).
        thresholds: (C,) decision thresholds (chosen on val).
        label_groups: (C,) ``head``/``medium``/``tail`` or "" per label.
        subgroups: attribute -> subgroup names and each row's index into them (:func:`subgroup_codes`).
        strata_w: attribute -> (b, N) row weights of a resample drawn inside each of its subgroups (the
            subgroup metrics' weights); an attribute not in it uses ``w``.
    """

    y: np.ndarray
    prob: np.ndarray
    w: np.ndarray
    include: np.ndarray
    thresholds: np.ndarray
    label_groups: np.ndarray
    subgroups: Subgroups
    strata_w: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def per_label(self) -> tuple[np.ndarray, np.ndarray]:
        """(b, C) AUROC and AP under each weighting (NaN where a label has one class)."""
        if "auc" not in self._cache:
            c = self.y.shape[1]
            auc, ap = np.full((self.w.shape[0], c), np.nan), np.full((self.w.shape[0], c), np.nan)
            known = np.isfinite(self.y)
            for j in range(c):
                rows = np.flatnonzero(known[:, j])
                if rows.size:
                    order, starts = _rank_groups(self.prob[rows, j])
                    auc[:, j], ap[:, j] = _weighted_auc_ap(
                        self.y[rows[order], j], self.w[:, rows[order]], starts
                    )
            self._cache["auc"], self._cache["ap"] = auc, ap
        return self._cache["auc"], self._cache["ap"]

    def decisions(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) predicted positive (``prob >= threshold`` on known entries) and (N, C) known positive."""
        known = np.isfinite(self.y)
        return (self.prob >= self.thresholds[None, :]) & known, self.y == 1


def _macro(per_label: np.ndarray, include: np.ndarray) -> np.ndarray:
    return macro_over_labels(per_label, include) if include.any() else np.full(per_label.shape[0], np.nan)


def _w_mse(s: Weighted) -> np.ndarray:
    known = np.isfinite(s.y)
    sq = np.where(known, (s.prob - np.nan_to_num(s.y)) ** 2, 0.0).sum(axis=1)  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s.w @ sq) / (s.w @ known.sum(axis=1))


def _w_f1(s: Weighted) -> np.ndarray:
    pred, pos = s.decisions()
    tp = s.w @ (pred & pos).astype(np.float64)  # (b, C)
    fp = s.w @ (pred & ~pos).astype(np.float64)
    fn = s.w @ (~pred & pos & np.isfinite(s.y)).astype(np.float64)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)  # scikit-learn's zero_division=0
    return _macro(f1, s.include)


def _w_ece(s: Weighted) -> np.ndarray:
    known = np.isfinite(s.y)
    bins = np.minimum((s.prob * ECE_BINS).astype(int), ECE_BINS - 1)  # (N, C)
    onehot = (bins[..., None] == np.arange(ECE_BINS)) & known[..., None]  # (N, C, bins)
    count = s.w @ onehot.sum(axis=1)  # (b, bins)
    ys = s.w @ (onehot * np.nan_to_num(s.y)[..., None]).sum(axis=1)
    ps = s.w @ (onehot * s.prob[..., None]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(ys - ps).sum(axis=1) / count.sum(axis=1)


Subgroups = dict[
    str, tuple[list[str], np.ndarray]
]  # attribute -> (subgroup names, (N,) index into them; -1 unknown)


def subgroup_codes(subgroups: pd.DataFrame | None) -> Subgroups:
    """Each attribute's subgroup names (age bins in age order, others sorted) and every row's index into them."""
    out: Subgroups = {}
    if subgroups is None:
        return out
    frame = subgroups.reset_index(drop=True)
    for attr in SUBGROUP_ATTRIBUTES:
        if attr not in frame.columns:
            continue
        names_of = _group_codes(frame, attr)
        present = set(names_of.dropna())
        names = [n for n in AGE_BINS if n in present] if attr == "age" else sorted(present)
        index = {name: i for i, name in enumerate(names)}
        out[attr] = (names, np.array([index.get(v, -1) for v in names_of], dtype=np.int64))
    return out


def _nan_reduce(reduce: Callable[..., np.ndarray], stacked: np.ndarray) -> np.ndarray:
    """``reduce(stacked, axis=0)`` over finite entries, NaN where a column has none.

    Not ``warnings.catch_warnings`` around numpy's all-NaN warning: compare scores runs on threads, and that
    context manager swaps a process-wide filter list.
    """
    out = np.full(stacked.shape[1:], np.nan)
    some = np.isfinite(stacked).any(axis=0)
    out[some] = reduce(stacked[:, some], axis=0)
    return out


def tpr_gaps(s: Weighted, subgroups: Subgroups | None = None) -> dict[str, np.ndarray]:
    """(b,) TPR gap of each subgroup (``sex/F``, ``age/60-80`` ...) as :func:`_fairness` defines it, weighted
    (an attribute's gaps under its within-subgroup weights ``s.strata_w[attr]`` when there are some).

    Args:
        s: the weighted predictions.
        subgroups: codes to use instead of ``s.subgroups`` (a permutation null; weights ``s.w``).
    """
    pred, pos = s.decisions()
    hits = (pred & pos).astype(np.float64)  # (N, C)
    posf = pos.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for attr, (names, codes) in (subgroups if subgroups is not None else s.subgroups).items():
        w = s.w if subgroups is not None else s.strata_w.get(attr, s.w)  # (b, N)

        def tpr(rows: np.ndarray, w: np.ndarray = w) -> np.ndarray:
            n_pos = w @ (posf * rows[:, None])  # (b, C)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n_pos > 0, (w @ (hits * rows[:, None])) / np.maximum(n_pos, 1e-300), np.nan)

        member = [codes == g for g in range(len(names))]  # (N,) each
        tprs = [tpr(rows) for rows in member]
        if attr == "sex":
            if len(names) < 2:
                continue
            refs = [tpr((codes >= 0) & ~rows) for rows in member]
        else:
            refs = [_nan_reduce(np.nanmedian, np.stack(tprs))] * len(names)  # (b, C) median over groups
        for name, t, ref in zip(names, tprs, refs, strict=True):
            diff = t - ref  # (b, C)
            finite = np.isfinite(diff)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{attr}/{name}"] = np.where(finite, diff, 0).sum(axis=1) / finite.sum(axis=1)
    return out


def _w_worst_gap(s: Weighted) -> np.ndarray:
    gaps = tpr_gaps(s)
    if not gaps:
        return np.full(s.w.shape[0], np.nan)
    return _nan_reduce(np.nanmax, np.abs(np.stack(list(gaps.values()))))  # (G, b) -> (b,)


def _group_macro(kind: str, group: str) -> Callable[[Weighted], np.ndarray]:
    def score(s: Weighted) -> np.ndarray:
        auc, ap = s.per_label()
        return _macro(auc if kind == "auc" else ap, s.include & (s.label_groups == group))

    return score


@dataclass(frozen=True)
class MetricSpec:
    """One compared metric, declared once: evaluate logs it, compare resamples and tests it, the report shows it.

    Attributes:
        name: key without the ``test/`` prefix (``macro_auc``), as :func:`compute_metrics` names it.
        title: a few words for the report.
        bounds: the range it lives in (None: unbounded).
        higher_is_better: the direction (↑ / ↓ in the report; which side a probability of improvement counts).
        headline: shown in the report's main per-cell table.
        score: (b,) values from one model's weighted predictions, or None for a metric only logged per run
            (then it has no patient resampling and no paired test: seeds only).
        resample: what its interval resamples, in words.
    """

    name: str
    title: str
    bounds: tuple[float, float] | None
    higher_is_better: bool
    headline: bool
    score: Callable[[Weighted], np.ndarray] | None
    resample: str = "seeds and patients"

    @property
    def paired(self) -> bool:
        """Recomputable from the logged predictions: patient-resampled interval and paired test."""
        return self.score is not None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


_METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a compared metric (the one place a new compared metric is declared)."""
    _METRICS[spec.name] = spec
    return spec


def list_metrics(paired: bool | None = None) -> list[MetricSpec]:
    """The compared metrics in declaration order (``paired``: only those with / without predictions)."""
    return [m for m in _METRICS.values() if paired is None or m.paired == paired]


def get_metric(name: str) -> MetricSpec:
    """The spec of a compared metric by name (``macro_auc`` or ``test/macro_auc``).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    key = name.removeprefix("test/")
    if key not in _METRICS:
        raise KeyError(f"unknown compared metric {name!r}; known: {', '.join(_METRICS)}")
    return _METRICS[key]


_UNIT = (0.0, 1.0)
register_metric(
    MetricSpec("macro_auc", "macro AUROC", _UNIT, True, True, lambda s: _macro(s.per_label()[0], s.include))
)
register_metric(MetricSpec("map", "mAP", _UNIT, True, True, lambda s: _macro(s.per_label()[1], s.include)))
for _g in LABEL_GROUPS:
    register_metric(MetricSpec(f"macro_auc_{_g}", f"{_g} AUROC", _UNIT, True, True, _group_macro("auc", _g)))
for _g in LABEL_GROUPS:
    register_metric(MetricSpec(f"map_{_g}", f"{_g} mAP", _UNIT, True, False, _group_macro("ap", _g)))
register_metric(MetricSpec("mse", "MSE (Brier)", _UNIT, False, True, _w_mse))
register_metric(MetricSpec("macro_f1", "macro F1 at val thresholds", _UNIT, True, True, _w_f1))
register_metric(MetricSpec("ece", "ECE (15 bins)", _UNIT, False, True, _w_ece))
register_metric(
    MetricSpec(
        "fair/worst_tpr_gap",
        "worst subgroup |TPR gap|",
        _UNIT,
        False,
        True,
        _w_worst_gap,
        "seeds and patients inside each subgroup",
    )
)
# The two embedding metrics are logged per run only, so compare cannot resample their patients. The gap is
# measured on image-side features of the first test images (the same images for every seed), which runs do not
# log: its seed interval misses the patient variation those images share. The label-prototype similarity is a
# function of the label embeddings alone (no test image enters it): the seed interval is its whole interval.
register_metric(
    MetricSpec(
        "embed/modality_gap",
        "modality gap",
        (0.0, 2.0),
        False,
        False,
        None,
        "seeds only (image features not logged)",
    )
)
register_metric(
    MetricSpec(
        "embed/mean_offdiag_sim/final",
        "label-prototype similarity",
        (-1.0, 1.0),
        False,
        False,
        None,
        "seeds (no test images in it)",
    )
)


def score_weighted(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    specs: Sequence[MetricSpec],
    n_boot: int,
    seed: int = 0,
    patients: np.ndarray | pd.Series | list | None = None,
    thresholds: np.ndarray | None = None,
    label_groups: Sequence[str] | None = None,
    subgroups: pd.DataFrame | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every paired metric of one model on the test set and on ``n_boot`` patient resamples.

    The resamples depend only on ``(patients, subgroups, n_boot, seed)``, so every model scored with the same
    arguments sees the same resamples and differences are paired. A resample draws patients from the whole test
    set (:func:`_row_counts`); the subgroup TPR gaps and the worst gap use their own resamples, drawn inside each
    subgroup of the attribute (:func:`_stratified_row_counts`), so a subgroup keeps its size and its interval
    holds its own patients' variation, not the chance of how many of its patients a resample happened to draw.

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        y_prob: (N, C) probabilities.
        specs: the metrics (those with ``score``).
        n_boot: patient resamples.
        seed: seed of the resamples.
        patients: (N,) patient id per row (None: each row its own patient).
        thresholds: (C,) decision thresholds; None = 0.5.
        label_groups: (C,) head/medium/tail per label.
        subgroups: N rows with ``sex``/``age``/``view`` columns (any may be absent).

    Returns:
        ``(values, per_label_auc)``: metric name -> (1 + B,) with the test-set value first (the ``specs``, then
        each subgroup's TPR gap as ``fair/<attribute>/tpr_gap/<subgroup>``), and (1 + B, C) AUROC.
    """
    y, prob = _check_shapes(y_true, y_prob)
    n, c = y.shape
    thr = np.full(c, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    groups = np.asarray(label_groups if label_groups is not None else [""] * c, dtype=object)
    sub = subgroup_codes(subgroups)
    include = np.isfinite(per_label_auc_ap(y, prob)[0])
    batches: list[tuple[np.ndarray, dict[str, np.ndarray]]] = [(np.ones((1, n)), {})]
    if n_boot > 0:
        codes = cluster_codes(patients, n)
        within = {  # the subgroup metrics' resamples: patients drawn inside each subgroup of the attribute
            attr: _stratified_row_counts(codes, index, n_boot, (seed, 3, SUBGROUP_ATTRIBUTES.index(attr)))
            for attr, (_, index) in sub.items()
        }
        for w in _row_counts(codes, n_boot, seed):
            batches.append((w, {attr: next(chunks) for attr, chunks in within.items()}))
    values: dict[str, list[np.ndarray]] = {m.name: [] for m in specs if m.score is not None}
    aucs = []
    for w, strata_w in batches:
        s = Weighted(y, prob, w, include, thr, groups, sub, strata_w)
        for m in specs:
            if m.score is not None:
                values[m.name].append(m.score(s))
        for key, gap in tpr_gaps(s).items():  # every subgroup's gap, e.g. fair/sex/tpr_gap/F
            attr, name = key.split("/", 1)
            values.setdefault(f"fair/{attr}/tpr_gap/{name}", []).append(gap)
        aucs.append(s.per_label()[0])
    return {k: np.concatenate(v) for k, v in values.items()}, np.concatenate(aucs)


def worst_gap_null(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: np.ndarray | None,
    subgroups: pd.DataFrame,
    n_perm: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """(n_perm,) worst |TPR gap| with each attribute's subgroup names permuted over the rows.

    Under "no group difference" the worst gap is still above 0 (a maximum of noisy gaps); these values are its
    null distribution, the level an observed worst gap must be read against.
    """
    y, prob = _check_shapes(y_true, y_prob)
    n, c = y.shape
    codes = subgroup_codes(subgroups)
    thr = np.full(c, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    s = Weighted(y, prob, np.ones((1, n)), np.ones(c, bool), thr, np.full(c, "", dtype=object), codes)
    rng = np.random.default_rng([seed, 2])
    out = np.empty(n_perm)
    for i in range(n_perm):
        shuffled = {a: (names, v[rng.permutation(n)]) for a, (names, v) in codes.items()}
        gaps = tpr_gaps(s, shuffled)
        out[i] = max((abs(float(g[0])) for g in gaps.values() if np.isfinite(g[0])), default=np.nan)
    return out
