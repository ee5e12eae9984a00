"""After a run: read a logged run back (its config, data and trained model), re-evaluate it, explore it.

The run pipeline (:mod:`cxrfa.cell`) writes what these functions read: ``config.json``, the checkpoint
and the val/test predictions. Nothing here trains; the exploration modules never import back from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrfa.cell import run_datasets
from cxrfa.cell_evaluation import explore_sample
from cxrfa.config import RunConfig, validate
from cxrfa.data.load import load_data
from cxrfa.data.manifest import Manifest
from cxrfa.errors import CxrfaError
from cxrfa.metrics import GAP_STATS, save_gap_stats
from cxrfa.safeload import load_state
from cxrfa.standins import prepare_backbone
from cxrfa.tracking import TrackedRun, Tracker
from cxrfa.train import load_trained_state, resolve_device


def run_config(tracker: Tracker, run_id: str, dst: Path) -> RunConfig:
    """The resolved config a run logged (``config.json``)."""
    return validate(
        RunConfig,
        json.loads(tracker.download(run_id, "config.json", dst).read_text()),
        f"run {run_id} config.json",
    )


def load_run(tracker: Tracker, run_id: str, dst: Path) -> tuple[RunConfig, Manifest, Any]:
    """The config, data and trained model of a logged run (from its ``config.json`` and checkpoint)."""
    from cxrfa.models import build_model

    cfg = run_config(tracker, run_id, dst)
    manifest = load_data(cfg.data, progress=False)
    model_cfg = cfg.model.model_copy(
        update={
            "visual": prepare_backbone(cfg.model.visual, manifest),
            "text": prepare_backbone(cfg.model.text, manifest),
        }
    )
    model = build_model(
        model_cfg,
        manifest.labels,
        resolve_device(cfg.train.device),
        report=cfg.loss.report > 0,
        seed=cfg.seed,
    )
    state = load_state(
        tracker.download(run_id, "checkpoint/model.pt", dst),
        name=f"run {run_id} artifact checkpoint/model.pt",
        fix="the artifact is damaged; re-run the cell to log a new one",
    )
    load_trained_state(model, state["state_dict"])
    return cfg, manifest, model


def explore_run(
    tracker: Tracker, run_id: str, parts: Sequence[str], out: Path, seed: int = 0, dims: int = 2
) -> dict[str, Path]:
    """Embedding diagnostics of a trained run: written to ``out`` and logged on the run (metrics + plots).

    ``parts``: any of ``gap``, ``similarity`` (via :func:`cxrfa.explore.explore_model`) and ``umap`` (pooled
    image features and the label embeddings in one UMAP space: PNG + interactive HTML).

    Raises:
        CxrfaError: the run has no text branch (nothing to align) or its artifacts are missing.
    """
    import shutil

    from cxrfa.explore import explore_model, image_attributes
    from cxrfa.explore.model import run_heads
    from cxrfa.explore.report import save_figure, write_json, write_umap_report

    cfg, manifest, model = load_run(tracker, run_id, out / ".download")
    shutil.rmtree(out / ".download", ignore_errors=True)
    if cfg.model.text is None:
        raise CxrfaError(
            f"run {run_id} ({cfg.cell}) has no text branch: there are no label embeddings to explore"
        )
    device = resolve_device(cfg.train.device)
    data = run_datasets(cfg, model, manifest, progress=True)
    tokens, embedding, y_true = explore_sample(model, data["test"], device)
    run = TrackedRun(tracker, run_id)
    paths: dict[str, Path] = {}
    basic = [p for p in parts if p != "umap"]
    if basic:
        patients = manifest.split("test").frame["patient_id"].to_numpy()[: len(y_true)]
        result = explore_model(
            model.heads,
            tokens,
            embedding,
            y_true,
            manifest.labels,
            parts=tuple(basic),
            seed=seed,
            patients=patients,
        )
        run.log_metrics(result.scalars)
        if result.gap_stats is not None:  # with the gap it replaces, so compare resamples the logged number
            run.log_artifact(save_gap_stats(result.gap_stats, out / GAP_STATS))
        paths["json"] = write_json(result.scalars, out / "explore.json")
        for name, figure in result.figures.items():
            paths[name] = save_figure(figure, out / f"{name}.png")
            run.log_artifact(paths[name], "plots")
    if "umap" in parts:
        heads = run_heads(model.heads, tokens, embedding)
        rows = manifest.split("test").frame.iloc[: len(y_true)]  # the images explore_sample encoded
        umap_paths = write_umap_report(
            heads["pooled"],
            heads["labels_emb"],
            y_true,
            manifest.labels,
            out,
            dims=dims,
            seed=seed,
            image_ids=rows["path"].astype(str).tolist(),
            attributes=image_attributes(rows),  # site / view / sex: what domain alignment should blur
            progress=True,
        )
        for name, path in umap_paths.items():
            paths[f"umap_{name}"] = path
            run.log_artifact(path, "plots")
    return paths


def evaluate_run(tracker: Tracker, run_id: str, out: Path, n_boot: int = 200, seed: int | None = None) -> Any:
    """Re-evaluate a logged run from its logged val/test predictions, against the manifest it was trained on.

    Returns the :class:`cxrfa.metrics.MetricsResult`; writes ``metrics.json``, ``per_label.csv`` and plots to
    ``out``. With the run's seed and the same ``n_boot`` the numbers equal the run's logged ``test/...`` metrics.
    """
    import pandas as pd

    from cxrfa.evaluate import evaluate_predictions

    tmp = out / ".download"
    cfg = run_config(tracker, run_id, tmp)
    manifest = load_data(cfg.data, progress=False)
    test = pd.read_csv(tracker.download(run_id, "test_predictions.csv", tmp), dtype={"path": str})
    val = pd.read_csv(tracker.download(run_id, "val_predictions.csv", tmp), dtype={"path": str})
    result = evaluate_predictions(
        test,
        manifest,
        "test",
        out,
        val_pred=val,
        n_boot=n_boot,
        seed=cfg.seed if seed is None else seed,
        pred_source=f"run {run_id} test_predictions.csv",
        val_source=f"run {run_id} val_predictions.csv",
    )
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return result
