"""The field's baselines as cells: zero-shot prompts, a linear probe on frozen embeddings, and a pixel floor.

A cell's ``kind`` (:class:`cxrfa.config.RunConfig`) picks one; ``trained`` cells never come here.

- ``zeroshot`` (CheXzero): per label, the image embedding against the mean of its positive and of its negated
  prompts (``model.prompts``) through the visual backbone's own text tower (:mod:`cxrfa.zeroshot`); nothing is
  fitted.
- ``probe``: one logistic regression per label on the frozen backbone's pooled embeddings (the feature cache's
  ``embedding``), standardised on train; the inverse regularisation C is chosen on val, never on test.
- ``pixels``: the same logistic regressions on each image downsampled to 32 x 32 grey values: the floor every
  learned cell must beat. ``model.visual`` is not used.

Each returns val and test probabilities that :func:`cxrfa.record.log_evaluation` scores and logs exactly
as for a trained run (val picks thresholds, test reports), so ``compare`` shows a baseline as one more row.

Seeds: all three are deterministic (lbfgs has no randomness; the seed is still passed as the solver's
``random_state``). Every seed of a baseline cell runs and gives the same predictions, so ``compare`` can pair
seed k with seed k of any other cell; a baseline's spread over seeds is zero and its intervals come from the
patient bootstrap alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrfa.config import BackboneConfig, RunConfig
from cxrfa.data.manifest import Manifest
from cxrfa.errors import CxrfaError
from cxrfa.metrics import masked_auc, per_label_auc_ap
from cxrfa.prompts import prompt_tags
from cxrfa.record import log_evaluation
from cxrfa.tracking import TrackedRun
from cxrfa.train import FitResult, resolve_device

log = logging.getLogger(__name__)

PROBE_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths tried on val
PIXEL_SIZE = 32  # side of the grey thumbnail the pixel baseline reads (32 x 32 = 1024 features)
PROBE_MAX_ITER = 2000

Features = Callable[[Manifest], np.ndarray]  # rows -> (N, D) float64 features, in row order


@dataclass(frozen=True)
class BaselineResult:
    """Probabilities of one baseline on val and test, and the numbers that describe how it was set."""

    p_val: np.ndarray  # (Nv, C) in the val rows' order
    p_test: np.ndarray | None  # (N, C) in the test rows' order; None when the test split was not predicted
    scalars: dict[str, float]  # logged beside the test metrics (e.g. probe/C)


# ---------------------------------------------------------------------------------------------------------
# the linear probe (also the pixel baseline's model)


@dataclass(frozen=True)
class ProbeFit:
    """Per-label logistic regressions on standardised features, with the C chosen on val."""

    c: float
    val_auc_by_c: dict[float, float]  # val macro AUROC of every C tried
    mean: np.ndarray  # (D,) train feature means
    scale: np.ndarray  # (D,) train feature standard deviations (1 where constant)
    models: list[object]  # per label: a fitted LogisticRegression, or a constant probability (one class)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, C) probabilities."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale  # (N, D)
        cols = [
            m.predict_proba(z)[:, 1] if hasattr(m, "predict_proba") else np.full(len(z), float(m))  # type: ignore[attr-defined]
            for m in self.models
        ]
        return np.stack(cols, axis=1)  # (N, C)


def _fit_labels(z: np.ndarray, y: np.ndarray, c: float, seed: int) -> list[object]:
    """One logistic regression per label on its known rows (NaN = unknown); a one-class label -> its rate."""
    from sklearn.linear_model import LogisticRegression

    models: list[object] = []
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        yj = y[known, j]
        if len(np.unique(yj)) < 2:  # nothing to separate: predict the train rate (0.5 without known rows)
            models.append(float(yj.mean()) if len(yj) else 0.5)
            continue
        lr = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, random_state=seed)
        models.append(lr.fit(z[known], yj.astype(int)))
    return models


def fit_probe(
    manifest: Manifest, features: Features, seed: int = 0, cs: Sequence[float] = PROBE_CS
) -> ProbeFit:
    """Fit the per-label probes on the train rows and choose C by val macro AUROC.

    Only the train and val rows (features and labels) are read: the test split plays no part in the choice.
    One C serves every label: a per-label choice on a few val positives of a tail label would pick noise.
    Ties go to the smaller C (the stronger regularisation).

    Args:
        manifest: the run's manifest (its ``train`` and ``val`` splits are used).
        features: rows -> (N, D) features.
        seed: the solver's ``random_state`` (lbfgs is deterministic, so it changes nothing).
        cs: the inverse regularisation strengths tried.

    Returns:
        The :class:`ProbeFit` with the chosen C, refitted on train.
    """
    train, val = manifest.split("train"), manifest.split("val")
    x_train, y_train = features(train), train.label_matrix().astype(np.float64)  # (M, D), (M, C)
    x_val, y_val = features(val), val.label_matrix().astype(np.float64)  # (Nv, D), (Nv, C)
    mean = x_train.mean(0)
    scale = x_train.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # constant features (e.g. a border pixel) stay at 0
    z_train, z_val = (x_train - mean) / scale, (x_val - mean) / scale
    labels = list(manifest.labels)
    scores: dict[float, float] = {}
    fitted: dict[float, list[object]] = {}
    for c in cs:
        fitted[c] = _fit_labels(z_train, y_train, c, seed)
        p_val = ProbeFit(c, {}, np.zeros(z_val.shape[1]), np.ones(z_val.shape[1]), fitted[c]).predict(z_val)
        scores[c] = masked_auc(y_val, p_val, labels)[1]
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    best = max(finite, key=lambda c: (finite[c], -c)) if finite else min(cs)
    log.info(
        "probe: C=%g chosen on val (macro AUROC %s)", best, {f"{c:g}": round(s, 4) for c, s in scores.items()}
    )
    return ProbeFit(best, scores, mean, scale, fitted[best])


# ---------------------------------------------------------------------------------------------------------
# features


def pixel_features(rows: Manifest, size: int = PIXEL_SIZE) -> np.ndarray:
    """(N, size*size) grey values in [0, 1] of each image resized to ``size`` x ``size`` (cached on disk).

    The cache key is the content hash of every image file, so it follows the images, not the manifest.
    """
    from PIL import Image

    from cxrfa.data.dataset import load_image
    from cxrfa.io import file_sha256
    from cxrfa.models.cache import cached_tensor

    paths = rows.image_paths()
    key = json.dumps(["pixels", size, [file_sha256(p) for p in paths]])

    def compute() -> torch.Tensor:
        out = np.empty((len(paths), size * size), dtype=np.float32)
        for i, path in enumerate(paths):
            grey = load_image(path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(grey, dtype=np.float32).reshape(-1) / 255.0
        return torch.from_numpy(out)

    return cached_tensor("pixels", key, compute).numpy().astype(np.float64)


def embedding_features(encoder: object, use_cache: bool) -> Features:
    """rows -> (N, De) pooled embeddings of a frozen encoder, through the on-disk feature cache."""
    from cxrfa.models.cache import FeatureCache

    cache = FeatureCache(enabled=use_cache)

    def features(rows: Manifest) -> np.ndarray:
        _, embedding = cache.encode_dataset(encoder, rows, progress=False)  # type: ignore[arg-type]
        return embedding.double().numpy()  # (N, De)

    return features


# ---------------------------------------------------------------------------------------------------------
# the three kinds


def _frozen_encoder(cfg: RunConfig, visual: BackboneConfig, device: torch.device) -> object:
    from cxrfa.models import build_encoder

    return build_encoder(visual, device)


def run_zeroshot(
    cfg: RunConfig, manifest: Manifest, visual: BackboneConfig, device: torch.device, evaluate: bool
) -> BaselineResult:
    """CheXzero zero-shot probabilities from the visual backbone's own text tower and ``model.prompts``.

    Raises:
        CxrfaError: the visual backbone has no text tower.
    """
    from cxrfa.zeroshot import zero_shot_probs

    encoder = _frozen_encoder(cfg, visual, device)
    if not encoder.has_text:  # type: ignore[attr-defined]
        raise CxrfaError(
            f"cell {cfg.cell!r}: kind=zeroshot needs a visual backbone with a text tower (clip/biomedclip), "
            f"not {visual.name!r}; set model.visual"
        )
    labels = list(manifest.labels)
    pos = encoder.label_embeddings(labels, negative=False, prompts=cfg.model.prompts)  # type: ignore[attr-defined]
    neg = encoder.label_embeddings(labels, negative=True, prompts=cfg.model.prompts)  # type: ignore[attr-defined]
    features = embedding_features(encoder, cfg.train.feature_cache)

    def score(rows: Manifest) -> np.ndarray:
        return zero_shot_probs(features(rows), pos, neg)  # (N, C)

    p_test = score(manifest.split("test")) if evaluate else None
    return BaselineResult(score(manifest.split("val")), p_test, {})


def _probe_result(
    cfg: RunConfig, manifest: Manifest, features: Features, prefix: str, evaluate: bool
) -> BaselineResult:
    """Fit a probe on ``features`` (C on val) and predict val and, when evaluating, test."""
    fit = fit_probe(manifest, features, seed=cfg.seed)
    p_test = fit.predict(features(manifest.split("test"))) if evaluate else None
    scalars = {f"{prefix}/C": fit.c}
    scalars.update({f"{prefix}/val_macro_auc/C={c:g}": s for c, s in fit.val_auc_by_c.items()})
    return BaselineResult(fit.predict(features(manifest.split("val"))), p_test, scalars)


def run_probe(
    cfg: RunConfig, manifest: Manifest, visual: BackboneConfig, device: torch.device, evaluate: bool
) -> BaselineResult:
    """Linear probe on the frozen visual backbone's pooled embeddings."""
    encoder = _frozen_encoder(cfg, visual, device)
    return _probe_result(
        cfg, manifest, embedding_features(encoder, cfg.train.feature_cache), "probe", evaluate
    )


def run_pixels(
    cfg: RunConfig, manifest: Manifest, visual: BackboneConfig, device: torch.device, evaluate: bool
) -> BaselineResult:
    """Logistic regression per label on 32 x 32 grey pixels (the floor)."""
    return _probe_result(cfg, manifest, pixel_features, "pixels", evaluate)


BASELINES: dict[str, Callable[[RunConfig, Manifest, BackboneConfig, torch.device, bool], BaselineResult]] = {
    "zeroshot": run_zeroshot,
    "probe": run_probe,
    "pixels": run_pixels,
}


def describe_baseline(cfg: RunConfig) -> str:
    """A baseline run's description in the MLflow UI."""
    what = {
        "zeroshot": f"zero-shot, {cfg.model.visual.name} ({cfg.model.visual.source}) with prompts "
        f"{cfg.model.prompts!r}; no training",
        "probe": f"linear probe (logistic regression per label, C on val) on frozen "
        f"{cfg.model.visual.name} ({cfg.model.visual.source}) embeddings",
        "pixels": f"logistic regression per label (C on val) on {PIXEL_SIZE}x{PIXEL_SIZE} grey pixels",
    }[cfg.kind]
    return f"**{cfg.cell}**, seed {cfg.seed}: baseline, {what}. Config hash `{cfg.config_hash()}`."


# ---------------------------------------------------------------------------------------------------------
# the run


def run_baseline(
    cfg: RunConfig,
    manifest: Manifest,
    train_manifest: Manifest,
    visual: BackboneConfig,
    run: TrackedRun | None,
    evaluate: bool,
) -> tuple[dict[str, float], FitResult]:
    """Run one baseline cell inside :func:`cxrfa.cell.run_cell` (which tracks it) and score it.

    Args:
        cfg: the run's config (``cfg.kind`` is a baseline).
        manifest: the whole manifest (val and test rows are scored from it).
        train_manifest: the rows a probe fits on (the label fraction's train rows; val and test unchanged).
        visual: the visual backbone with stand-in weights resolved.
        run: the tracked run, or None.
        evaluate: False (tuning) predicts val only and logs the val value; the test split is never read.

    Returns:
        The logged final values and a :class:`cxrfa.train.FitResult` with no epochs (best_epoch 0) whose best
        value is the val metric the config monitors.
    """

    if cfg.data.external:
        log.warning("cell %s: external sets are not scored for baseline cells (kind=%s)", cfg.cell, cfg.kind)
    result = BASELINES[cfg.kind](cfg, train_manifest, visual, resolve_device(cfg.train.device), evaluate)
    if run is not None and cfg.kind == "zeroshot":
        run.set_tags(prompt_tags(cfg.model.prompts))
    auc, ap = per_label_auc_ap(manifest.split("val").label_matrix(), result.p_val)  # (C,), (C,)
    monitored = auc if cfg.train.monitor == "val/macro_auc" else ap
    value = float(np.nanmean(monitored)) if np.isfinite(monitored).any() else float("nan")
    fit = FitResult(best_epoch=0, best_value=value, epochs_run=0)
    extra = {"val/best_" + cfg.train.monitor.removeprefix("val/"): value, "best_epoch": 0.0, **result.scalars}
    if not evaluate or result.p_test is None:
        if run is not None:
            run.log_metrics(extra)
        return extra, fit
    return log_evaluation(cfg, manifest, result.p_val, result.p_test, run, extra), fit
