"""The compared metrics, declared once each: evaluate logs them, compare resamples and tests them, the report
shows them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cxrfa.metrics.compute import LABEL_GROUPS
from cxrfa.metrics.gap import GAP_STATS, weighted_gap
from cxrfa.metrics.weighted import Weighted, _group_macro, _macro, _w_ece, _w_f1, _w_mse, _w_worst_gap


@dataclass(frozen=True)
class MetricSpec:
    """One compared metric, declared once: evaluate logs it, compare resamples and tests it, the report shows it.

    Attributes:
        name: key without the ``test/`` prefix (``macro_auc``), as :func:`compute_metrics` names it.
        title: a few words for the report.
        bounds: the range it lives in (None: unbounded).
        higher_is_better: the direction (↑ / ↓ in the report; which side a probability of improvement counts).
        headline: shown in the report's main per-cell table.
        score: (b,) values from one model's weighted predictions, or None for a metric not computed from them.
        resample: what its interval resamples, in words.
        artifact: for a metric computed from something else a run logs: that file (an ``.npz`` of arrays with a
            ``patients`` (P,) array of patient ids), which compare reads.
        patient_score: (b,) values from the ``artifact``'s arrays under (b, P) patient weights (P in its
            ``patients`` order; ones = the logged value).

        A metric with neither ``score`` nor ``patient_score`` is only logged per run: no patient resampling and
        no paired test, seeds only.
    """

    name: str
    title: str
    bounds: tuple[float, float] | None
    higher_is_better: bool
    headline: bool
    score: Callable[[Weighted], np.ndarray] | None
    resample: str = "seeds and patients"
    artifact: str | None = None
    patient_score: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray] | None = None

    @property
    def paired(self) -> bool:
        """Recomputable under patient weights (from the predictions or its artifact): patient-resampled interval
        and paired test."""
        return self.score is not None or self.patient_score is not None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


_METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a compared metric (the one place a new compared metric is declared)."""
    _METRICS[spec.name] = spec
    return spec


def list_metrics(paired: bool | None = None) -> list[MetricSpec]:
    """The compared metrics in declaration order (``paired``: only those with / without patient
    replicates)."""
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
# The gap is measured on image-side features of the first test images (the same images for every seed): each
# run logs per-patient sums of them (metrics.gap), so its replicates draw the same patients as every other metric.
register_metric(
    MetricSpec(
        "embed/modality_gap",
        "modality gap",
        (0.0, 2.0),
        False,
        False,
        None,
        "seeds and patients (of the explored test images)",
        artifact=GAP_STATS,
        patient_score=weighted_gap,
    )
)
# The label-prototype similarity is a function of the label embeddings alone (no test image enters it), so it is
# logged per run only: the seed interval is its whole interval.
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
