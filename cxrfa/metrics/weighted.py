"""Compared metrics under row weights (1 = the test set, patient-resample counts = a bootstrap replicate): the
predictions a :class:`~cxrfa.metrics.registry.MetricSpec` scores, and the shared-resample scoring of one model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrfa.metrics.bootstrap import cluster_codes, row_counts, stratified_row_counts
from cxrfa.metrics.fairness import SUBGROUP_ATTRIBUTES, Subgroups, subgroup_codes
from cxrfa.metrics.ranking import (
    _check_shapes,
    _rank_groups,
    _weighted_auc_ap,
    macro_over_labels,
    per_label_auc_ap,
)
from cxrfa.metrics.thresholds import ECE_BINS

if TYPE_CHECKING:
    from cxrfa.metrics.registry import MetricSpec


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
    """(b,) TPR gap of each subgroup (``sex/F``, ``age/60-80`` ...) as :func:`cxrfa.metrics.fairness._fairness`
    defines it, weighted (an attribute's gaps under its within-subgroup weights ``s.strata_w[attr]`` when there
    are some).

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
    set (:func:`row_counts`); the subgroup TPR gaps and the worst gap use their own resamples, drawn inside each
    subgroup of the attribute (:func:`stratified_row_counts`), so a subgroup keeps its size and its interval
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
            attr: stratified_row_counts(codes, index, n_boot, (seed, 3, SUBGROUP_ATTRIBUTES.index(attr)))
            for attr, (_, index) in sub.items()
        }
        for w in row_counts(codes, n_boot, seed):
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
