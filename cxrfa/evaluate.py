"""Evaluate a predictions table against a manifest split and write the metrics, tables and plots.

A predictions table has a ``path`` column (the manifest's image path) and one probability column per label,
nothing else; :func:`predictions_frame` builds one. :func:`evaluate_predictions` checks it fully before any
file is written, so bad input leaves the output folder untouched; :func:`write_evaluation` writes each file
atomically.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa import plots
from cxrfa.config import ExternalSet
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_path, atomic_write_text
from cxrfa.labels import group_by_prevalence, harmonise
from cxrfa.metrics import MetricsResult, choose_thresholds, compute_metrics

log = logging.getLogger(__name__)

PLOT_FILES: tuple[str, ...] = ("roc.png", "pr.png", "confusion.png", "calibration.png", "subgroups.png")


def predictions_frame(paths: Sequence[str], probs: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """A predictions table: ``path`` then one probability column per label.

    Args:
        paths: N image paths as in the manifest.
        probs: (N, C) probabilities.
        labels: C label names.

    Raises:
        ValueError: the lengths disagree.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(paths), len(labels)):
        raise ValueError(f"probs {probs.shape} does not match {len(paths)} paths x {len(labels)} labels")
    frame = pd.DataFrame(probs, columns=list(labels))
    frame.insert(0, "path", [str(p) for p in paths])
    return frame


def _aligned_probs(pred: pd.DataFrame, manifest: Manifest, split: str, source: str) -> np.ndarray:
    """Check a predictions table against one manifest split; return (N, C) probabilities in manifest order.

    Raises:
        CxrfaError: one line naming ``source`` and the offending row/column, for a missing ``path`` column,
            missing or extra label columns, duplicate/missing/extra rows, or a value that is not a
            probability. Rows are reported as CSV line numbers (header = line 1).
    """
    labels = list(manifest.labels)
    if "path" not in pred.columns:
        raise CxrfaError(f"{source}: no 'path' column; predictions need 'path' plus one column per label")
    missing = [lab for lab in labels if lab not in pred.columns]
    if missing:
        raise CxrfaError(
            f"{source}: missing label column(s) {', '.join(map(repr, missing))}; expected one "
            f"probability column per manifest label"
        )
    extra = [str(c) for c in pred.columns if c != "path" and c not in labels]
    if extra:
        raise CxrfaError(
            f"{source}: unexpected column(s) {', '.join(map(repr, extra))}; "
            f"keep only 'path' and the manifest's labels"
        )
    paths = pred["path"].astype("string")
    dup = paths.duplicated(keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise CxrfaError(f"{source}: line {row + 2}: path {paths.iat[row]!r} appears more than once")
    part = manifest.split(split)
    if len(part) == 0:
        raise CxrfaError(f"manifest has no {split!r} rows; choose a split among train/val/test that has rows")
    wanted = part.frame["path"].astype("string")
    index = pd.Index(paths)
    extra_rows = ~paths.isin(set(wanted))
    if extra_rows.any():
        row = int(np.flatnonzero(extra_rows.to_numpy())[0])
        raise CxrfaError(
            f"{source}: line {row + 2}: path {paths.iat[row]!r} is not in the manifest's {split!r} "
            f"split ({int(extra_rows.sum())} such row(s)); predict exactly that split"
        )
    absent = ~wanted.isin(set(paths))
    if absent.any():
        first = wanted[absent].iat[0]
        raise CxrfaError(
            f"{source}: {int(absent.sum())} {split!r} image(s) have no prediction, e.g. {first!r}; "
            f"predict every image of the split"
        )
    for lab in labels:
        values = pd.to_numeric(pred[lab], errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raw = pred[lab].iat[row]
            shown = repr(raw) if isinstance(raw, str) else ("empty/NaN" if pd.isna(raw) else str(raw))
            raise CxrfaError(
                f"{source}: line {row + 2}, column {lab!r}: {shown} is not a probability in [0, 1]"
            )
    order = index.get_indexer(wanted)  # (N,) predictions row of each manifest row
    return pred[labels].to_numpy(dtype=np.float64)[order]


def evaluate_predictions(
    pred: pd.DataFrame,
    manifest: Manifest,
    split: str,
    out: Path,
    val_pred: pd.DataFrame | None = None,
    n_boot: int = 200,
    seed: int = 0,
    *,
    pred_source: str = "predictions",
    val_source: str = "validation predictions",
) -> MetricsResult:
    """Score predictions on one manifest split and write the evaluation files into ``out``.

    Thresholds are chosen on ``val_pred`` (the manifest's ``val`` split) when given, else 0.5 (logged).
    Long-tail groups come from the train-split prevalence; subgroups from the manifest's sex/age/view; the
    bootstrap CIs resample the manifest's patients (``patient_id``), keeping all their images.

    Args:
        pred: predictions table for ``split`` (see :func:`predictions_frame`).
        manifest: the manifest the predictions refer to.
        split: split being evaluated (normally ``test``).
        out: output folder (created).
        val_pred: predictions for the ``val`` split, used only to choose thresholds.
        n_boot: patient bootstrap resamples for the CIs.
        seed: bootstrap seed.
        pred_source: name of ``pred`` in error messages (its file path).
        val_source: name of ``val_pred`` in error messages.

    Returns:
        The :class:`MetricsResult`.

    Raises:
        CxrfaError: the predictions do not match the manifest (nothing is written then).
    """
    probs = _aligned_probs(pred, manifest, split, pred_source)  # (N, C)
    val_probs = None if val_pred is None else _aligned_probs(val_pred, manifest, "val", val_source)  # (Nv, C)
    result = score_split(manifest, split, probs, val_probs, n_boot=n_boot, seed=seed)
    write_evaluation(result, out)
    return result


def score_split(
    manifest: Manifest,
    split: str,
    probs: np.ndarray,
    val_probs: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> MetricsResult:
    """Metrics of one split: thresholds chosen on val, long-tail groups, subgroups, patient-bootstrap CIs.

    The one place where "val picks thresholds, test reports" happens, for a run being trained and for
    predictions scored afterwards alike.

    Args:
        manifest: the whole manifest (val rows choose thresholds, train rows give label prevalence).
        split: the split being scored (normally ``test``).
        probs: (N, C) probabilities in the order of the split's manifest rows.
        val_probs: (Nv, C) probabilities of the ``val`` rows, in their order; None = threshold 0.5 (logged).
        n_boot: patient bootstrap resamples for the CIs.
        seed: bootstrap seed.
    """
    part = manifest.split(split)
    return compute_metrics(
        part.label_matrix(),
        probs,
        list(manifest.labels),
        thresholds=_val_thresholds(manifest, val_probs),
        subgroups=part.frame[["sex", "age", "view"]],
        label_groups=_label_groups(manifest),
        n_boot=n_boot,
        seed=seed,
        patients=part.frame["patient_id"],
    )


def _val_thresholds(manifest: Manifest, val_probs: np.ndarray | None) -> np.ndarray | None:
    """(C,) thresholds chosen on the manifest's val rows, or None (0.5, logged) without val predictions."""
    if val_probs is None:
        log.info("no validation predictions: decision threshold 0.5 for every label (F1, confusion, TPR)")
        return None
    return choose_thresholds(manifest.split("val").label_matrix(), val_probs)


def _label_groups(manifest: Manifest) -> dict[str, str] | None:
    """head/medium/tail per label from the manifest's train prevalence (None without train rows)."""
    if (manifest.frame["split"] == "train").any():
        return group_by_prevalence(manifest.prevalence("train"))
    log.warning("manifest has no train rows: long-tail (head/medium/tail) metrics skipped")
    return None


# ---------------------------------------------------------------------------------------------------------
# external test sets


def external_rows(spec: ExternalSet, labels: Sequence[str]) -> tuple[Manifest, dict[str, str], str]:
    """Read an external test set, keep its chosen rows and map its labels onto a run's.

    Args:
        spec: the external set (manifest path, name, split).
        labels: the run's labels.

    Returns:
        ``(rows, shared, data_hash)``: the chosen rows relabelled to ``labels`` (a label the set lacks is
        unknown), run label -> the set's column for the labels both have (in the run's order), and the data
        hash of the whole external manifest.

    Raises:
        CxrfaError: the manifest cannot be read, the split is empty, or no label is shared.
    """
    ext = read_manifest(spec.path)
    part = ext if spec.split == "all" else ext.split(spec.split)
    if len(part) == 0:
        raise CxrfaError(
            f"{spec.path}: external set {spec.key!r} has no {spec.split!r} rows; choose its split "
            "(train/val/test/all)"
        )
    mapping = harmonise(list(ext.labels), list(labels))
    shared = {lab: col for lab, col in mapping.items() if col is not None}
    if not shared:
        raise CxrfaError(
            f"{spec.path}: external set {spec.key!r} ({ext.label_set}) shares no label with the run's "
            f"({', '.join(labels)}); index it with a label set that overlaps (--label-set)"
        )
    frame = part.frame[[c for c in part.frame.columns if c not in ext.labels]].copy()
    for lab in labels:
        frame[lab] = part.frame[shared[lab]] if lab in shared else np.nan
    rows = Manifest(frame, part.root, list(labels), ext.label_set, part.source)
    return rows, shared, ext.data_hash()


def score_external(
    manifest: Manifest,
    rows: Manifest,
    shared: Sequence[str],
    probs: np.ndarray,
    val_probs: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> MetricsResult:
    """Metrics of a run's predictions on an external set, over the labels it shares with the run.

    Thresholds are the ones chosen on the *source* manifest's val split and the long-tail groups come from the
    source's train prevalence, so the external numbers measure transfer, not re-fitting.

    Args:
        manifest: the run's own manifest.
        rows: the external rows relabelled to the run's labels (:func:`external_rows`).
        shared: the run labels the external set has (metric keys use the run's spelling).
        probs: (N, C) the run's probabilities on ``rows``, C = the run's labels.
        val_probs: (Nv, C) the run's probabilities on its own val rows; None = threshold 0.5 (logged).
        n_boot: patient bootstrap resamples for the CIs (the external set's patients).
        seed: bootstrap seed.
    """
    keep = [list(manifest.labels).index(lab) for lab in shared]  # (S,) columns of the shared labels
    thresholds = _val_thresholds(manifest, val_probs)
    groups = _label_groups(manifest)
    return compute_metrics(
        rows.label_matrix()[:, keep],
        np.asarray(probs, dtype=np.float64)[:, keep],
        list(shared),
        thresholds=None if thresholds is None else thresholds[keep],
        subgroups=rows.frame[["sex", "age", "view"]],
        label_groups=None if groups is None else {lab: groups[lab] for lab in shared},
        n_boot=n_boot,
        seed=seed,
        patients=rows.frame["patient_id"],
    )


def _json_value(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def write_evaluation(result: MetricsResult, out: Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_label.csv`` and the plots of one evaluation into ``out``, atomically.

    ``metrics.json`` is the flat ``result.scalars`` object (undefined values as ``null``) plus
    ``thresholds_from_val`` (1 when thresholds came from validation predictions, 0 for 0.5).

    Returns:
        File name → path written (``metrics.json``, ``per_label.csv``, ``roc.png``, ``pr.png``,
        ``confusion.png``, ``calibration.png``, ``subgroups.png``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = {k: _json_value(v) for k, v in result.scalars.items()}
    payload["thresholds_from_val"] = int(result.thresholds_from_val)
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
    written["metrics.json"] = out / "metrics.json"
    atomic_write_text(out / "per_label.csv", result.per_label.to_csv(index=False))
    written["per_label.csv"] = out / "per_label.csv"
    figures = {
        "roc.png": lambda: plots.roc_curves(result.y_true, result.y_prob, result.labels),
        "pr.png": lambda: plots.pr_curves(result.y_true, result.y_prob, result.labels),
        "confusion.png": lambda: plots.confusion_grid(
            result.confusion,
            result.labels,
            result.per_label.set_index("label")["threshold"].reindex(result.labels).tolist(),
            result.thresholds_from_val,
        ),
        "calibration.png": lambda: plots.calibration_plot(result.y_true, result.y_prob),
        "subgroups.png": lambda: plots.subgroup_chart(result.scalars),
    }
    for name, make in figures.items():
        with atomic_path(out / name) as tmp:
            plots.save_png(make(), tmp)
        written[name] = out / name
    log.info("wrote evaluation to %s", out)
    return written
