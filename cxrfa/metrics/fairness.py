"""Subgroups of sex, age bin and view: per-subgroup AUROC, TPR and TPR gap of one set of predictions, and the
subgroup codes the weighted metrics read."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from cxrfa.data.ages import AGE_BINS, age_bins
from cxrfa.metrics.ranking import _nanmean, per_label_auc_ap

SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("sex", "age", "view")


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
