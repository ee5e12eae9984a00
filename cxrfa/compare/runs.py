"""Which runs a comparison may use, and their test predictions aligned image by image.

Scope: the cell runs of one ablation parent (``--parent``, or the experiment's newest parent), or, in an
experiment without parents, the runs sharing one data hash. Runs of different data hashes are never compared.
Within the scope a cell contributes one config (its newest): runs of an older config of the same cell (e.g. an
untuned matrix re-run with ``--tuned`` under the same parent) are left out, never pooled as extra seeds.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError
from cxrfa.tracking import (
    TAG_CELL,
    TAG_CELLS,
    TAG_DATA_HASH,
    TAG_MATRIX,
    TAG_PARENT,
    TAG_SEED,
    TAG_TRIAL,
    RunInfo,
    Tracker,
)

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """The runs of one comparison.

    Attributes:
        parent: the ablation parent run (None for runs made without one).
        by_cell: cell -> one run per seed, ascending seed; cells in matrix order (:func:`_cell_order`).
        data_hash: the one data hash every run was trained and tested on.
        notes: runs left out, and why (shown in the report).
    """

    parent: RunInfo | None
    by_cell: dict[str, list[RunInfo]]
    data_hash: str
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunInfo]:
        return [r for runs in self.by_cell.values() for r in runs]


def _is_cell_run(run: RunInfo) -> bool:
    return run.status == "FINISHED" and TAG_CELL in run.tags and TAG_TRIAL not in run.tags


def _newest_parent(tracker: Tracker) -> tuple[RunInfo | None, list[RunInfo]]:
    """The newest ablation parent with finished cell runs, and those runs (newest first)."""
    for parent in tracker.search(f"tags.`{TAG_PARENT}` != ''"):
        if TAG_MATRIX not in parent.tags:
            continue  # a tuning study's parent, not an ablation
        runs = [r for r in tracker.children(parent.run_id) if _is_cell_run(r)]
        if runs:
            return parent, runs
    return None, []


def _one_data_hash(runs: list[RunInfo], where: str) -> str:
    """The data hash all runs share; mixing two is an error naming both."""
    first: dict[str, RunInfo] = {}
    for run in runs:
        first.setdefault(run.tags.get(TAG_DATA_HASH, "(none)"), run)
    if len(first) > 1:
        (h1, r1), (h2, r2) = list(first.items())[:2]
        raise CxrfaError(
            f"{where} mixes data hashes {h1} (run {r1.run_id}, {r1.name}) and {h2} (run {r2.run_id}, {r2.name}); "
            "runs of different data are never compared: pass --parent of one ablation"
        )
    return next(iter(first))


def _config(run: RunInfo) -> tuple[tuple[str, str], ...]:
    """A run's resolved config without its seed: runs of one cell with equal configs are seeds of it."""
    return tuple(sorted((k, v) for k, v in run.params.items() if k != "seed"))


def _cell_order(runs: list[RunInfo], parent: RunInfo | None) -> list[str]:
    """The cells of ``runs`` in the matrix file's order (recorded on the parent), then any others in the order
    they first ran. Not the run order alone: workers start the longest cells first."""
    ran = list(dict.fromkeys(r.tags[TAG_CELL] for r in reversed(runs)))  # runs come newest first
    try:
        matrix = json.loads(parent.tags.get(TAG_CELLS, "[]")) if parent is not None else []
    except json.JSONDecodeError:
        matrix = []
    return [c for c in matrix if c in ran] + [c for c in ran if c not in matrix]


def _one_config_per_cell(runs: list[RunInfo], order: list[str]) -> tuple[dict[str, list[RunInfo]], list[str]]:
    """Cell -> runs of the cell's newest config, one per seed (newest); notes on what was left out."""
    newest_first: dict[str, list[RunInfo]] = defaultdict(list)
    for run in runs:  # runs come newest first
        newest_first[run.tags[TAG_CELL]].append(run)
    by_cell, notes = {}, []
    for cell in order:
        chosen = _config(newest_first[cell][0])
        same = [r for r in newest_first[cell] if _config(r) == chosen]
        other = len(newest_first[cell]) - len(same)
        if other:
            differs = sorted({k for r in newest_first[cell] for k, v in _config(r) if (k, v) not in chosen})
            notes.append(
                f"{cell}: {other} run(s) of an older config left out (differs in {', '.join(differs[:4])})"
            )
        per_seed: dict[str, RunInfo] = {}
        for run in same:
            per_seed.setdefault(run.tags.get(TAG_SEED, "0"), run)
        by_cell[cell] = sorted(per_seed.values(), key=lambda r: int(r.tags.get(TAG_SEED, "0")))
    return by_cell, notes


def select_runs(tracker: Tracker, parent_id: str | None = None) -> Selection:
    """The runs to compare: one parent's cell runs (``parent_id`` or the newest), else one data hash's.

    Raises:
        CxrfaError: no finished cell runs, or the runs mix data hashes (naming both).
    """
    if parent_id is not None:
        parent: RunInfo | None = tracker.get(parent_id)
        runs = [r for r in tracker.children(parent_id) if _is_cell_run(r)]
        where = f"parent run {parent_id}"
    else:
        parent, runs = _newest_parent(tracker)
        where = f"parent run {parent.run_id}" if parent else f"experiment {tracker.experiment!r}"
        if parent is None:
            runs = [r for r in tracker.search(f"tags.`{TAG_CELL}` != ''") if _is_cell_run(r)]
    if not runs:
        raise CxrfaError(f"no finished cell runs in {where}; run `cxrfa ablate` first")
    data_hash = _one_data_hash(runs, where)
    by_cell, notes = _one_config_per_cell(runs, _cell_order(runs, parent))
    return Selection(parent, by_cell, data_hash, notes)


# --------------------------------------------------------------------------------------------------------------


@dataclass
class TestSet:
    """The test images every selected run predicted, in one order, and what scoring them needs.

    Attributes:
        paths: N image paths (the manifest's).
        labels: C label names.
        y: (N, C) labels, 1/0/NaN.
        patients: (N,) patient ids, or None when they could not be read (then each image is its own cluster).
        unit: how the bootstrap resamples, in words, for the methods note.
        probs: run id -> (N, C) test probabilities, rows in ``paths`` order.
        label_info: per label: ``group`` (head/medium/tail by train prevalence) and ``n_pos`` (test positives).
        thresholds: run id -> (C,) decision thresholds chosen on that run's val predictions (absent: 0.5).
        subgroups: (N,) rows of ``sex``/``age``/``view`` in ``paths`` order, or None without the manifest.
        prevalence: (C,) train-split prevalence per label (the constant predictor), or None without it.
        artifacts: metric name -> run id -> the arrays of the metric's per-run file (``MetricSpec.artifact``),
            for the runs that logged one.
        notes: what could not be read, for the methods block.
    """

    paths: list[str]
    labels: list[str]
    y: np.ndarray
    patients: np.ndarray | None
    unit: str
    probs: dict[str, np.ndarray]
    label_info: pd.DataFrame
    thresholds: dict[str, np.ndarray] = field(default_factory=dict)
    subgroups: pd.DataFrame | None = None
    prevalence: np.ndarray | None = None
    artifacts: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read(tracker: Tracker, run: RunInfo, name: str, tmp: Path) -> pd.DataFrame:
    return pd.read_csv(tracker.download(run.run_id, name, tmp / run.run_id), dtype={"path": str})


def gather(tracker: Tracker, sel: Selection, progress: bool = False) -> TestSet:
    """Download every run's test (and val) predictions and pair them by image path.

    The first run's test labels fix the image order; every other run must have predicted exactly those images
    with the same labels (they share the data hash, so anything else is a damaged run). Val predictions choose
    each run's thresholds on the manifest's val labels, as evaluation did.

    Raises:
        CxrfaError: a run's test images or labels differ from the others'.
    """
    from tqdm.auto import tqdm

    from cxrfa.metrics import list_metrics

    runs = sel.runs
    probs: dict[str, np.ndarray] = {}
    val_probs: dict[str, pd.DataFrame] = {}
    artifacts: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cxrfa-compare-") as folder:
        tmp = Path(folder)
        truth = _read(tracker, runs[0], "test_labels.csv", tmp)
        labels = [c for c in truth.columns if c != "path"]
        paths = truth["path"].tolist()
        y = truth[labels].to_numpy(dtype=np.float64)
        for run in tqdm(
            runs, desc="compare: fetching runs", unit="run", disable=not progress, dynamic_ncols=True
        ):
            pred = _read(tracker, run, "test_predictions.csv", tmp).set_index("path")
            if set(pred.index) != set(paths) or list(pred.columns) != labels:
                raise CxrfaError(
                    f"run {run.run_id} ({run.name}): its test predictions cover other images or labels than run "
                    f"{runs[0].run_id} although both have data hash {sel.data_hash}; re-run that cell"
                )
            probs[run.run_id] = pred.loc[paths, labels].to_numpy(dtype=np.float64)
            listed = tracker.list_artifacts(run.run_id)
            if "val_predictions.csv" in listed:
                val_probs[run.run_id] = _read(tracker, run, "val_predictions.csv", tmp).set_index("path")
            for spec in list_metrics():
                if spec.artifact is not None and spec.artifact in listed:
                    path = tracker.download(run.run_id, spec.artifact, tmp / run.run_id)
                    try:
                        with np.load(path, allow_pickle=False) as data:
                            artifacts.setdefault(spec.name, {})[run.run_id] = {k: data[k] for k in data.files}
                    except (OSError, ValueError) as err:  # damaged: that run's value counts by its seed only
                        notes.append(f"run {run.run_id}: {spec.artifact} unreadable ({str(err)[:80]})")
        per_label = _read(tracker, runs[0], "evaluation/per_label.csv", tmp).set_index("label")
        label_info = per_label.reindex(labels)[["group", "n_pos"]].fillna({"group": ""})
        manifest, unit = _manifest(tracker, runs[0], sel.data_hash, tmp)
    test = TestSet(paths, labels, y, None, unit, probs, label_info, artifacts=artifacts, notes=notes)
    if manifest is None:
        test.notes.append("no manifest: thresholds 0.5, no subgroups and no constant-prevalence baseline")
        return test
    frame = manifest.split("test").frame.set_index("path").reindex(paths)
    if frame["patient_id"].isna().any():
        test.unit = "images: the manifest lacks some test images; intervals are too narrow"
        log.warning("the manifest lacks some test images: the bootstrap resamples images")
    else:
        test.patients = frame["patient_id"].astype(str).to_numpy()
        n = len(set(test.patients))
        test.unit = f"patients ({n} patients, {len(paths)} test images)"
    test.subgroups = frame[[c for c in ("sex", "age", "view") if c in frame.columns]].reset_index(drop=True)
    if (manifest.frame["split"] == "train").any():
        prevalence = manifest.prevalence("train")
        test.prevalence = np.array([prevalence.get(lab, np.nan) for lab in labels], dtype=np.float64)
    test.thresholds, missing = _thresholds(manifest, labels, val_probs, [r.run_id for r in runs])
    if missing:
        test.notes.append(f"{missing} run(s) without val predictions: F1 and TPR gaps at threshold 0.5 there")
    return test


def _thresholds(
    manifest: Any, labels: list[str], val_probs: dict[str, pd.DataFrame], run_ids: list[str]
) -> tuple[dict[str, np.ndarray], int]:
    """Run id -> thresholds chosen on its val predictions (the manifest's val rows); and how many runs had none."""
    from cxrfa.metrics import choose_thresholds

    val = manifest.split("val")
    out: dict[str, np.ndarray] = {}
    if not len(val.frame):
        return out, len(run_ids)
    val_paths = val.frame["path"].tolist()
    for run_id, frame in val_probs.items():
        if set(val_paths) <= set(frame.index) and set(labels) <= set(frame.columns):
            out[run_id] = choose_thresholds(
                val.label_matrix(), frame.loc[val_paths, labels].to_numpy(np.float64)
            )
    return out, len(run_ids) - len(out)


def _manifest(tracker: Tracker, run: RunInfo, data_hash: str, tmp: Path) -> tuple[Any, str]:
    """The manifest the runs used, checked against their data hash; None (and why, in words) when unusable."""
    from cxrfa.data.load import load_data
    from cxrfa.postrun import run_config

    try:
        manifest = load_data(run_config(tracker, run.run_id, tmp / "config").data, progress=False)
    except CxrfaError as err:
        reason = f"the runs' manifest cannot be read ({str(err)[:160]})"
    else:
        if manifest.data_hash() == data_hash:
            return manifest, ""
        reason = f"the manifest now has data hash {manifest.data_hash()}, the runs {data_hash}"
    log.warning(
        "patient ids unavailable (%s): the bootstrap resamples images, so intervals are too narrow", reason
    )
    return None, f"images: patient ids unavailable because {reason}; intervals are too narrow"
