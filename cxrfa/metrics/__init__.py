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
* fairness: per subgroup of sex, age bin and view, macro AUROC, mean TPR and a TPR gap (``fairness._fairness``).

One module per concept: :mod:`~cxrfa.metrics.ranking` (AUROC/AP under row weights),
:mod:`~cxrfa.metrics.bootstrap` (patient resamples), :mod:`~cxrfa.metrics.thresholds` (decisions, F1, calibration),
:mod:`~cxrfa.metrics.fairness` (subgroups), :mod:`~cxrfa.metrics.compute` (the entry point),
:mod:`~cxrfa.metrics.weighted` (compared metrics under resample weights), :mod:`~cxrfa.metrics.gap` (the
modality gap under patient weights) and :mod:`~cxrfa.metrics.registry` (one
declaration per compared metric). Import from the package: the names below are its public surface.
"""

from cxrfa.metrics.bootstrap import (
    bootstrap_per_label,
    cluster_codes,
    percentile_ci,
    row_counts,
    stratified_row_counts,
)
from cxrfa.metrics.compute import LABEL_GROUPS, MetricsResult, compute_metrics
from cxrfa.metrics.fairness import SUBGROUP_ATTRIBUTES, Subgroups, subgroup_codes
from cxrfa.metrics.gap import GAP_STATS, gap_statistics, load_gap_stats, save_gap_stats, weighted_gap
from cxrfa.metrics.ranking import auc_ap, macro_over_labels, masked_auc, per_label_auc_ap
from cxrfa.metrics.registry import MetricSpec, get_metric, list_metrics, register_metric
from cxrfa.metrics.thresholds import (
    ECE_BINS,
    calibration_in_the_large,
    choose_thresholds,
    expected_calibration_error,
)
from cxrfa.metrics.weighted import Weighted, score_weighted, tpr_gaps, worst_gap_null

__all__ = [
    "ECE_BINS",
    "GAP_STATS",
    "LABEL_GROUPS",
    "SUBGROUP_ATTRIBUTES",
    "MetricSpec",
    "MetricsResult",
    "Subgroups",
    "Weighted",
    "auc_ap",
    "bootstrap_per_label",
    "calibration_in_the_large",
    "choose_thresholds",
    "cluster_codes",
    "compute_metrics",
    "expected_calibration_error",
    "gap_statistics",
    "get_metric",
    "list_metrics",
    "load_gap_stats",
    "macro_over_labels",
    "masked_auc",
    "per_label_auc_ap",
    "percentile_ci",
    "register_metric",
    "row_counts",
    "save_gap_stats",
    "score_weighted",
    "stratified_row_counts",
    "subgroup_codes",
    "tpr_gaps",
    "weighted_gap",
    "worst_gap_null",
]
