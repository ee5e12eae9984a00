"""What a scored run records on its MLflow run: the test metrics (thresholds from val) in one batch, and its
predictions, labels, evaluation files and config in one folder logged in one artifact call.

Trained cells (:mod:`cxrfa.cell_evaluation`) and the baseline cells (:mod:`cxrfa.baselines`) record alike, so
every row of ``compare`` is scored and stored the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from cxrfa.config import RunConfig
from cxrfa.data.manifest import Manifest
from cxrfa.tracking import TrackedRun


def log_evaluation(
    cfg: RunConfig,
    manifest: Manifest,
    p_val: np.ndarray,
    p_test: np.ndarray,
    run: TrackedRun | None,
    extra: Mapping[str, float],
    files: Callable[[Path], None] | None = None,
) -> dict[str, float]:
    """Score test predictions (thresholds from val) and log the metrics, predictions, labels and config.

    Shared by trained runs and the baseline cells (:mod:`cxrfa.baselines`), so every row of ``compare`` is
    scored and stored alike.

    Args:
        cfg: the run's config.
        manifest: the whole manifest (val and test rows in order).
        p_val: (Nv, C) val probabilities; p_test: (N, C) test probabilities.
        run: the tracked run, or None.
        extra: further final values logged with the test metrics (e.g. ``val/best_macro_auc``).
        files: writes the run's own further files (plots, checkpoint) into the folder that is logged.

    Returns:
        ``test/<metric>`` for every test metric, then ``extra``.
    """
    from cxrfa.evaluate import predictions_frame, score_split, write_evaluation

    test_part = manifest.split("test")
    test = score_split(manifest, "test", p_test, p_val, n_boot=200, seed=cfg.seed)
    scalars = {f"test/{k}": v for k, v in test.scalars.items()}
    scalars.update(extra)
    if run is None:
        return scalars
    run.log_metrics(scalars)  # final values at step 0: one bar per run in MLflow's chart view
    # every file in one folder, logged in one call: each MLflow artifact call is a store round trip
    with run.scratch() as tmp:
        write_evaluation(test, tmp / "evaluation")
        predictions_frame(list(test_part.frame["path"]), p_test, manifest.labels).to_csv(
            tmp / "test_predictions.csv", index=False
        )
        predictions_frame(list(manifest.split("val").frame["path"]), p_val, manifest.labels).to_csv(
            tmp / "val_predictions.csv", index=False
        )
        truth = test_part.frame[["path", *manifest.labels]]
        truth.to_csv(tmp / "test_labels.csv", index=False, float_format="%.0f")
        (tmp / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        if files is not None:
            files(tmp)
        run.log_artifacts(tmp)
    return scalars
