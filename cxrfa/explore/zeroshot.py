"""Backbone-level exploration inputs and CheXzero-style zero-shot classification.

Zero-shot: each label has a positive and a negative prompt set (:func:`cxrfa.labels.prompts_for`); an image's
probability for the label is the softmax over its (positive, negative) cosine logits, taken at the positive. The
scoring itself is :mod:`cxrfa.zeroshot` (shared with the stand-ins' pretraining check); this module feeds it an
encoder's embeddings of a manifest split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cxrfa.errors import CxrfaError
from cxrfa.explore._common import to_numpy
from cxrfa.zeroshot import LOGIT_SCALE, zero_shot_auc, zero_shot_probs

if TYPE_CHECKING:
    from cxrfa.data.manifest import Manifest
    from cxrfa.models.cache import FeatureCache
    from cxrfa.models.encoders import Encoder

log = logging.getLogger(__name__)

__all__ = [
    "LOGIT_SCALE",
    "encode_split",
    "prompt_embeddings",
    "require_split",
    "zero_shot",
    "zero_shot_probs",
]


def _require_text(encoder: Encoder) -> None:
    if not encoder.has_text:
        raise CxrfaError(
            f"encoder {encoder.identity!r} has no text tower; zero-shot and label embeddings need a "
            "clip or biomedclip backbone"
        )


def prompt_embeddings(encoder: Encoder, labels: Sequence[str], negative: bool = False) -> np.ndarray:
    """One embedding per label (C, De): its prompts encoded, L2-normalised, averaged, renormalised.

    Args:
        encoder: an encoder with a text tower.
        labels: C label names.
        negative: use the negated prompts ("no evidence of ...") instead.

    Raises:
        CxrfaError: the encoder has no text tower.
    """
    _require_text(encoder)
    return to_numpy(encoder.label_embeddings(list(labels), negative=negative))  # (C, De), cached on disk


def require_split(manifest: Manifest, split: str | None) -> Manifest:
    """The rows of ``split`` (all rows for None).

    Raises:
        CxrfaError: the split has no rows.
    """
    part = manifest.split(split) if split is not None else manifest
    if len(part) == 0:
        where = manifest.source or "the manifest"
        raise CxrfaError(f"{where}: no rows in split {split!r}; choose another split with --split")
    return part


def encode_split(
    encoder: Encoder,
    manifest: Manifest,
    split: str | None = "test",
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, Manifest]:
    """Joint-space image embeddings of one split, through the frozen-feature cache.

    Args:
        encoder: the image encoder.
        manifest: the dataset.
        split: ``train``/``val``/``test``, or None for every row.
        cache: the feature cache; None = compute without reading or writing a cache.
        batch_size: images per encoder batch.
        progress: show a progress bar.

    Returns:
        ``(embedding (N, De) float64, y_true (N, C) with NaN, the split's manifest)`` in row order.

    Raises:
        CxrfaError: the split has no rows.
    """
    from cxrfa.models.cache import FeatureCache

    part = require_split(manifest, split)
    cache = cache if cache is not None else FeatureCache(enabled=False)
    _, embedding = cache.encode_dataset(encoder, part, batch_size=batch_size, progress=progress)  # (N, De)
    return to_numpy(embedding), part.label_matrix().astype(np.float64), part


def zero_shot(
    encoder: Encoder,
    manifest: Manifest,
    split: str = "test",
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[str, float], float]:
    """Zero-shot AUROC of a CLIP-style backbone on one split of a manifest.

    Returns:
        ``({label: AUROC}, macro AUROC)``; labels without both classes among known rows get NaN and are left
        out of the macro mean.

    Raises:
        CxrfaError: no text tower, or an empty split.
    """
    _require_text(encoder)
    img, y_true, part = encode_split(encoder, manifest, split, cache, batch_size, progress)
    labels = part.labels
    pos, neg = prompt_embeddings(encoder, labels), prompt_embeddings(encoder, labels, negative=True)
    per_label, macro = zero_shot_auc(y_true, img, pos, neg, labels)
    log.info("zero-shot macro AUROC on %s (%d images): %.4f", split, len(part), macro)
    return per_label, macro
