"""Evaluate a cell's trained model: val picks thresholds, test reports, external sets and the embedding
exploration beside them; every number and file goes to the run through :func:`cxrfa.record.log_evaluation`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrfa.config import ExternalSet, RunConfig
from cxrfa.data.features import FeatureDataset
from cxrfa.data.manifest import Manifest
from cxrfa.metrics import GAP_STATS, save_gap_stats
from cxrfa.record import log_evaluation
from cxrfa.tracking import TrackedRun
from cxrfa.train import FitResult, make_loader, predict, trained_state

TAG_EXTERNAL_PREFIX = "cxrfa.external."  # + <name>.data_hash / <name>.labels: what an external set was
EXPLORE_SAMPLE = (
    512  # test images used for embedding exploration (tokens of a real test set don't fit in RAM)
)


def evaluate_model(
    cfg: RunConfig,
    model: Any,
    manifest: Manifest,
    data: Mapping[str, Dataset],
    result: FitResult,
    run: TrackedRun | None,
    explore: Sequence[str],
    device: torch.device,
) -> dict[str, float]:
    """Val picks thresholds, test reports; every number and file is logged on the run."""
    from cxrfa.plots import save_png, training_curves

    def predicted(split: str) -> np.ndarray:
        loader = make_loader(
            data[split], cfg.train.batch_size * 2, shuffle=False, cfg=cfg.train, device=device
        )
        return predict(model, loader, device, cfg.train.amp)[0]  # (N, C), in manifest row order

    # val as fit predicted it at the kept epoch (same weights, same loader); predicted again only when that
    # epoch ran before a resume
    p_val = result.best_val if result.best_val is not None else predicted("val")  # (Nv, C)
    p_test = predicted("test")  # (N, C)
    extra = {"val/best_" + cfg.train.monitor.removeprefix("val/"): result.best_value}
    extra["best_epoch"] = result.best_epoch
    figures: dict[str, Any] = {}  # plots/<name>.png of the exploration, logged with the run's other files
    gap_stats = None  # what embed/modality_gap is computed from, for compare's patient resamples
    if cfg.model.text is not None and explore:
        patients = manifest.split("test").frame["patient_id"].to_numpy()
        explored, figures, gap_stats = _explore(
            model, data["test"], manifest.labels, patients, device, explore
        )
        extra.update(explored)
    for spec in cfg.data.external:  # external validation: the same model and thresholds on other manifests
        extra.update(_evaluate_external(cfg, spec, model, manifest, p_val, run, device))

    def trained_files(folder: Path) -> None:
        """The plots and the checkpoint, into the folder that is logged: the checkpoint is written once."""
        (folder / "plots").mkdir()
        for name, figure in {"training_curves": training_curves(result.history), **figures}.items():
            save_png(figure, folder / "plots" / f"{name}.png")
        (folder / "checkpoint").mkdir()
        torch.save(
            {
                "config": cfg.model_dump(mode="json"),
                "labels": manifest.labels,
                "state_dict": trained_state(model),
                "best_epoch": result.best_epoch,
            },
            folder / "checkpoint" / "model.pt",
        )
        if gap_stats is not None:
            save_gap_stats(gap_stats, folder / GAP_STATS)

    return log_evaluation(cfg, manifest, p_val, p_test, run, extra, trained_files)


def _evaluate_external(
    cfg: RunConfig,
    spec: ExternalSet,
    model: Any,
    manifest: Manifest,
    p_val: np.ndarray,
    run: TrackedRun | None,
    device: torch.device,
) -> dict[str, float]:
    """Predict one external test set and score it on the labels it shares with the run (``external/<name>/``).

    Frozen encoders read the images through the feature cache, like the run's own splits. Logs the set's data
    hash as a tag, its metrics, predictions and evaluation files on the run.
    """
    from cxrfa.evaluate import external_rows, predictions_frame, score_external, write_evaluation

    rows, shared, data_hash = external_rows(spec, manifest.labels)
    domains = np.zeros(len(rows), dtype=np.int64)  # unseen sites: the domain code is used by training only
    if cfg.model.visual.frozen:
        from cxrfa.models.cache import FeatureCache

        cache = FeatureCache(enabled=cfg.train.feature_cache)
        tokens, embedding = cache.encode_dataset(model.encoder, rows, progress=False)
        dataset: Dataset = FeatureDataset(tokens, embedding, rows.label_matrix(), domains)
    else:
        from cxrfa.data.dataset import CXRDataset

        dataset = CXRDataset(rows, model.encoder.preprocess, domains=domains, keep_decoded=False)
    loader = make_loader(dataset, cfg.train.batch_size * 2, shuffle=False, cfg=cfg.train, device=device)
    probs, _ = predict(model, loader, device, cfg.train.amp)  # (N, C), in the external rows' order
    result = score_external(manifest, rows, list(shared), probs, p_val, n_boot=200, seed=cfg.seed)
    prefix = f"external/{spec.key}/"
    scalars = {prefix + k: v for k, v in result.scalars.items()}
    scalars[prefix + "n_images"] = float(len(rows))
    scalars[prefix + "n_labels"] = float(len(shared))
    if run is not None:
        run.set_tags(
            {
                f"{TAG_EXTERNAL_PREFIX}{spec.key}.data_hash": data_hash,
                f"{TAG_EXTERNAL_PREFIX}{spec.key}.labels": json.dumps(shared),
            }
        )
        with run.scratch() as tmp:
            write_evaluation(result, tmp / spec.key)
            keep = [manifest.labels.index(lab) for lab in shared]
            predictions_frame(list(rows.frame["path"]), probs[:, keep], list(shared)).to_csv(
                tmp / spec.key / "predictions.csv", index=False
            )
            run.log_artifacts(tmp / spec.key, f"external/{spec.key}")
    return scalars


def _explore(
    model: Any,
    test_set: Dataset,
    labels: list[str],
    patients: np.ndarray,
    device: torch.device,
    parts: Sequence[str],
) -> tuple[dict[str, float], dict[str, Any], dict[str, np.ndarray] | None]:
    """Modality gap and label-similarity metrics, their figures (name -> figure) and the gap's per-patient sums
    on a sample of the test set (``patients``: the test split's patient ids in row order)."""
    from cxrfa.explore import explore_model

    tokens, embedding, y_true = explore_sample(model, test_set, device)
    result = explore_model(
        model.heads, tokens, embedding, y_true, labels, parts=tuple(parts), patients=patients[: len(y_true)]
    )
    return result.scalars, dict(result.figures), result.gap_stats


def explore_sample(
    model: Any, test_set: Dataset, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Encoder tokens (M, N, Dv), embeddings (M, De) and labels (M, C) of the first EXPLORE_SAMPLE test images."""
    n = min(len(test_set), EXPLORE_SAMPLE)  # type: ignore[arg-type]
    model.eval()
    if isinstance(test_set, FeatureDataset):  # cached features: the first n rows sliced, not n items stacked
        tokens = test_set.tokens[:n].float().to(device)
        return tokens, test_set.embedding[:n].float().to(device), test_set.labels[:n].numpy()
    items = [test_set[i] for i in range(n)]
    with torch.no_grad():
        if "tokens" in items[0]:
            tokens = torch.stack([it["tokens"] for it in items]).float().to(device)
            embedding = torch.stack([it["embedding"] for it in items]).float().to(device)
        else:
            images = torch.stack([it["image"] for it in items]).to(device)
            tokens, embedding = model.encoder.encode_image(images)
    return tokens, embedding, torch.stack([it["labels"] for it in items]).numpy()
