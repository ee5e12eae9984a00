"""The entry point: every metric of one set of predictions (:func:`compute_metrics`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrfa.metrics.bootstrap import bootstrap_per_label, percentile_ci
from cxrfa.metrics.fairness import _fairness
from cxrfa.metrics.ranking import _check_shapes, _nanmean, auc_ap, macro_over_labels, per_label_auc_ap
from cxrfa.metrics.thresholds import _confusion, _f1, calibration_in_the_large, expected_calibration_error

log = logging.getLogger(__name__)


LABEL_GROUPS: tuple[str, ...] = ("head", "medium", "tail")


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
