"""Embedding diagnostics of a trained alignment model, for the trainer to log after each dual-branch cell.

Scalars (``embed/...``) and Figures only; the caller decides where they go (MLflow, files).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.errors import CxrfaError
from cxrfa.explore._common import ArrayLike, l2_normalise, to_numpy
from cxrfa.explore.gap import (
    cosine_scores,
    default_deltas,
    gap_shift_experiment,
    measured_gap,
    no_image_gap,
    plot_gap_shift,
)
from cxrfa.explore.similarity import mean_offdiag, similarity_matrix, similarity_panels
from cxrfa.explore.umap_view import UmapLayout, image_groups, umap_figure, umap_place
from cxrfa.metrics import gap_statistics, masked_auc, weighted_gap

log = logging.getLogger(__name__)

PARTS: tuple[str, ...] = ("gap", "similarity", "umap")


@dataclass
class ExploreResult:
    """What :func:`explore_model` measured.

    Attributes:
        scalars: flat ``embed/...`` metrics (see :func:`explore_model`).
        figures: name -> Figure (``label_similarity``, ``gap_shift``).
        tables: name -> DataFrame (``gap_shift``: delta, gap, macro_auc).
        gap_stats: the per-patient sums ``embed/modality_gap`` is computed from
            (:func:`cxrfa.metrics.gap_statistics`), to be logged as :data:`cxrfa.metrics.GAP_STATS` so that compare
            can resample its patients; None without the gap.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    gap_stats: dict[str, np.ndarray] | None = None


def run_heads(
    model: Any, tokens: ArrayLike, embedding: ArrayLike, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Run the model's heads on cached encoder outputs in batches, in eval mode without gradients.

    Args:
        model: an ``AlignmentModel`` (``forward(tokens, embedding)``) or a model with
            ``forward_features(tokens, embedding)``.
        tokens: (M, N, Dv) encoder tokens (fp16 from the cache is fine).
        embedding: (M, De) encoder embeddings.

    Returns:
        ``features`` (M, C, d) and ``pooled`` (M, d) stacked over batches (when the model outputs them) and
        ``labels_emb`` (C, d), as float64 numpy arrays.
    """
    import torch

    forward = getattr(model, "forward_features", None) or model
    param = next(getattr(model, "heads", model).parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    tokens_t, emb_t = torch.as_tensor(tokens), torch.as_tensor(embedding)
    was_training = model.training
    model.eval()
    batches: dict[str, list[np.ndarray]] = {"features": [], "pooled": []}
    labels_emb = None
    try:
        with torch.no_grad():
            for start in range(0, tokens_t.shape[0], batch_size):
                out = forward(
                    tokens_t[start : start + batch_size].to(device, torch.float32),  # (B, N, Dv)
                    emb_t[start : start + batch_size].to(device, torch.float32),  # (B, De)
                )
                for key in batches:
                    if out.get(key) is not None:
                        batches[key].append(to_numpy(out[key]))
                if out.get("labels_emb") is not None and labels_emb is None:
                    labels_emb = to_numpy(out["labels_emb"])  # (C, d)
    finally:
        model.train(was_training)
    result = {key: np.concatenate(parts) for key, parts in batches.items() if parts}
    if labels_emb is not None:
        result["labels_emb"] = labels_emb
    return result


def label_stages(model: Any) -> dict[str, np.ndarray]:
    """The label embeddings at each stage of the text branch, in order (evaluated without dropout).

    Keys: ``raw`` (C, De_t) text-encoder label embeddings, ``projected`` (C, d), ``t2`` after transformer2
    and ``orth`` after the orthogonal module when the model has them, and ``final`` (the last stage, the L
    whose normalised rows are L̂).

    Args:
        model: an ``AlignmentModel`` or a model holding one as ``.heads``.
    """
    import torch

    heads = getattr(model, "heads", model)
    was_training = heads.training
    heads.eval()
    try:
        with torch.no_grad():
            stages = dict(heads.label_stages())
    finally:
        heads.train(was_training)
    return {name: to_numpy(emb) for name, emb in stages.items()}


def explore_model(
    model: Any,
    tokens: ArrayLike,
    embedding: ArrayLike,
    y_true: ArrayLike,
    labels: Sequence[str],
    batch_size: int = 256,
    step: float = 0.25,
    parts: Sequence[str] = ("gap", "similarity"),
    seed: int = 0,
    patients: Sequence[str] | np.ndarray | None = None,
) -> ExploreResult:
    """Modality gap, gap shift and label-similarity diagnostics of a model with a text branch.

    Scalars: ``embed/modality_gap`` (image-side disease features F of present diseases vs label embeddings
    L̂; pooled image features when the model has no aligner), ``embed/modality_gap_no_image`` (its reference:
    the same features averaged over the images, see :func:`~cxrfa.explore.gap.no_image_gap`),
    ``embed/modality_gap_pooled`` (pooled image features; every gap class-balanced),
    ``embed/align_macro_auc`` (macro AUROC of the cosine scores the gap is measured on),
    ``embed/mean_offdiag_sim/<stage>`` per text-branch stage (``raw`` ... ``final``).
    Figures: ``gap_shift``, ``label_similarity`` (one heatmap per stage, side by side) and, when asked for,
    ``umap`` (image-side features coloured by disease with the label embeddings as stars; slow: UMAP JIT).

    Args:
        model: a trained model (see :func:`run_heads`) exposing ``label_stages()``.
        tokens: (M, N, Dv) encoder tokens of the evaluation images.
        embedding: (M, De) encoder embeddings.
        y_true: (M, C) 1/0/NaN.
        labels: C label names.
        batch_size: images per forward pass.
        step: spacing of the gap-shift sweep, as a fraction of the measured gap.
        parts: which diagnostics to run: any of ``gap``, ``similarity``, ``umap``.
        seed: UMAP random state.
        patients: (M,) patient id of each image, for the gap's per-patient sums (None: each image its own).

    Raises:
        CxrfaError: an unknown part name.

    Returns:
        An :class:`ExploreResult`; empty when the model has no text branch.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise CxrfaError(f"unknown exploration part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    out = run_heads(model, tokens, embedding, batch_size)
    if "labels_emb" not in out:
        log.debug("model has no text branch; no embedding diagnostics")
        return ExploreResult()
    y = to_numpy(y_true)
    text = out["labels_emb"]  # (C, d)
    result = ExploreResult()
    if "pooled" in out:
        result.scalars["embed/modality_gap_pooled"] = measured_gap(out["pooled"], text, y).norm
    image = out.get("features", out.get("pooled"))  # (M, C, d) or (M, d)
    if image is not None and "umap" in parts:
        result.figures["umap"] = umap_figure(
            _feature_layout(image, text, y, labels, seed), "UMAP of image-side features and label embeddings"
        )
    if image is not None and "gap" in parts:
        # the logged gap is the one its logged sums give (compare's replicate at weights 1, to the last digit);
        # it equals measured_gap to ~1e-7 of the gap (the sums are float32)
        ids = np.arange(len(y)).astype(str) if patients is None else np.asarray(patients).astype(str)
        stats = result.gap_stats = gap_statistics(image, text, y, ids)
        result.scalars["embed/modality_gap"] = float(
            weighted_gap(stats, np.ones((1, stats["patients"].size)))[0]
        )
        result.scalars["embed/modality_gap_no_image"] = no_image_gap(image, text, y).norm  # its reference
        _, result.scalars["embed/align_macro_auc"] = masked_auc(y, cosine_scores(image, text), labels)
        frame = gap_shift_experiment(
            image, text, y, default_deltas(result.scalars["embed/modality_gap"], step)
        )
        result.tables["gap_shift"] = frame
        result.figures["gap_shift"] = plot_gap_shift(
            frame, "Gap shift: image-side features vs label embeddings"
        )
    if "similarity" in parts:
        stages = label_stages(model)
        for stage, emb in stages.items():
            result.scalars[f"embed/mean_offdiag_sim/{stage}"] = mean_offdiag(similarity_matrix(emb))
        result.figures["label_similarity"] = similarity_panels(_display_stages(stages), labels)
    return result


def _feature_layout(
    image: np.ndarray, text: np.ndarray, y: np.ndarray, labels: Sequence[str], seed: int
) -> UmapLayout:
    """UMAP layout of per-disease features F[b, c] of present diseases (coloured by c) or of pooled
    features (coloured by their finding), with the C label embeddings placed among them."""
    if image.ndim == 3:
        rows, cols = np.nonzero(np.nan_to_num(y, nan=0.0) == 1)  # present (image, disease) pairs
        points = image[rows, cols] if rows.size else image.reshape(-1, image.shape[-1])
        groups = (
            [labels[c] for c in cols] if rows.size else [labels[c % len(labels)] for c in range(len(points))]
        )
        ids = [f"image {r} / {labels[c]}" for r, c in zip(rows, cols, strict=True)] if rows.size else []
    else:
        points, groups, ids = image, image_groups(y, labels), [f"image {i}" for i in range(len(image))]
    xy, text_xy = umap_place(l2_normalise(points), l2_normalise(text), dims=2, seed=seed)
    return UmapLayout(xy, text_xy, groups, list(labels), ids or [f"feature {i}" for i in range(len(points))])


_STAGE_NAMES = {
    "raw": "text encoder (raw)",
    "centred": "centred over labels",
    "projected": "projected to d",
    "t2": "after transformer2",
    "orth": "after orthogonal module",
}


def _display_stages(stages: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Panels to draw: every stage once (``final`` repeats the last one), the last marked as final."""
    shown = {k: v for k, v in stages.items() if k != "final"} or dict(stages)
    names = [_STAGE_NAMES.get(k, k) for k in shown]
    names[-1] += " = final"
    return dict(zip(names, shown.values(), strict=True))
