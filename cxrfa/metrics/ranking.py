"""AUROC and average precision from the ranks of the scores, ties grouped as scikit-learn defines them, with
per-row weights: a bootstrap resample is a vector of row counts, so the scores are sorted once per label and
every resample reuses that order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def macro_over_labels(per_label: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Row-wise mean over finite entries of a (B, C) array (optionally only ``include`` columns); NaN if none."""
    values = per_label if include is None else per_label[:, include]
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def _check_shapes(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_prob.shape:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must be the same (N, C) shape")
    return y_true, y_prob
