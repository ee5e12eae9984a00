"""CheXzero-style zero-shot scoring: image embeddings against each label's positive and negated prompts.

The one scoring core behind pretraining's zero-shot check (:mod:`cxrfa.pretrain`), ``cxrfa explore zeroshot``
and any zero-shot evaluation of a run. It takes embeddings only: where they come from (an encoder's
``label_embeddings(labels, negative=...)``, which averages each label's prompt templates) is the caller's
business, so this module imports no model, data or application code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrfa.metrics import masked_auc

LOGIT_SCALE = 100.0  # CLIP's trained logit scale; AUROC does not depend on it, probabilities do


def _unit_rows(x: Any) -> np.ndarray:
    """float64 numpy rows scaled to unit L2 norm (torch tensors are detached and moved to the CPU)."""
    arr = np.asarray(x.detach().cpu().double().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    return arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), 1e-12)


def zero_shot_margin(img: Any, pos: Any, neg: Any) -> np.ndarray:
    """(N, C) cos(img, pos_c) - cos(img, neg_c): the zero-shot score, before any softmax.

    Args:
        img: image embeddings (N, D), numpy or torch.
        pos: positive-prompt label embeddings (C, D).
        neg: negated-prompt label embeddings (C, D).
    """
    img_n = _unit_rows(img)  # (N, D)
    return img_n @ _unit_rows(pos).T - img_n @ _unit_rows(neg).T  # (N, C)


def zero_shot_probs(img: Any, pos: Any, neg: Any, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """P(label present) (N, C) = softmax over (s·cos(img, pos_c), s·cos(img, neg_c)) at the positive.

    Args:
        img: image embeddings (N, D), numpy or torch.
        pos: positive-prompt label embeddings (C, D).
        neg: negated-prompt label embeddings (C, D).
        logit_scale: the softmax temperature's inverse, s.

    Returns:
        (N, C) probabilities in [0, 1].
    """
    # a two-way softmax at the positive is the logistic of the logit difference (numerically stable form)
    return 1.0 / (1.0 + np.exp(-logit_scale * zero_shot_margin(img, pos, neg)))


def zero_shot_auc(
    y_true: np.ndarray, img: Any, pos: Any, neg: Any, labels: Sequence[str]
) -> tuple[dict[str, float], float]:
    """Zero-shot AUROC per label and their macro mean, from embeddings.

    Ranks by :func:`zero_shot_margin`, which orders images exactly as :func:`zero_shot_probs` does but never
    saturates: at s = 100 a margin above ~0.37 rounds the probability to 1.0 and would tie distinct images.

    Args:
        y_true: (N, C) with 1, 0 or NaN (unknown: masked out).
        img: image embeddings (N, D).
        pos: positive-prompt label embeddings (C, D).
        neg: negated-prompt label embeddings (C, D).
        labels: the C label names.

    Returns:
        ``({label: AUROC}, macro)``; a label without both classes among its known rows gets NaN and is left
        out of the macro mean (NaN when no label qualifies).
    """
    return masked_auc(np.asarray(y_true, dtype=np.float64), zero_shot_margin(img, pos, neg), labels)
