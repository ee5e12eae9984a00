"""The pretraining objectives: CLIP's loss with every pair of the same findings a positive, its floor, and the
per-finding contrast of a stated against a negated finding."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


def positive_mask(keys: np.ndarray) -> Tensor:
    """(b, b) True where two rows have the same key (row i of a (b, K) array; NaN equals NaN)."""
    _, group = np.unique(np.nan_to_num(keys, nan=-1.0), axis=0, return_inverse=True)
    group = torch.as_tensor(group.reshape(-1))
    return group[:, None] == group[None, :]


def multi_positive_clip_loss(logits: Tensor, positive: Tensor) -> Tensor:
    """Symmetric CLIP loss with soft targets: each image's target is uniform over every text marked positive
    for it (its own and those with the same findings), and each text's over its positive images.

    Plain CLIP treats the identical "normal" reports of a batch as negatives of one another, so it punishes the
    true matches; here they share the target mass (SupCon/UniCL-style normalised targets).

    Args:
        logits: (b, b) image-text logits, row = image, column = text.
        positive: (b, b) boolean, symmetric, True on the diagonal.

    Returns:
        The mean of the image->text and text->image cross-entropies. Logits that ignore the image score exactly
        ``log b``; perfectly aligned ones the targets' entropy (:func:`loss_floor`).
    """
    target = positive.to(logits.dtype) / positive.sum(1, keepdim=True)  # (b, b), rows sum to 1
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = (
        -(target.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    )  # the mask is symmetric: target.T rows sum to 1
    return 0.5 * (i2t + t2i)


def loss_floor(positive: Tensor) -> float:
    """The lowest :func:`multi_positive_clip_loss` a (b, b) mask allows: the mean log of each row's positives."""
    return float(positive.sum(1).double().log().mean())


def finding_loss(margin: Tensor, targets: Tensor) -> Tensor:
    """Per image and label, a two-text contrast: the statement of the finding against its negation, the true
    one positive; class-balanced per label, so the rare findings are not drowned by their absences.

    For each label with a known positive and a known negative in the batch: the mean of its positives'
    cross-entropy and its negatives' cross-entropy; then the mean over those labels. A margin that ignores the
    image (constant per label) scores exactly ``log 2`` at best, the chance value.

    Args:
        margin: (b, C) logit of the stated minus the negated finding's text, per image.
        targets: (b, C) 1/0/NaN (unknown: left out).
    """
    pos, neg = targets == 1, targets == 0  # (b, C) each
    both = pos.any(0) & neg.any(0)  # (C,)
    if not both.any():
        return margin.sum() * 0.0
    ce_pos = (F.softplus(-margin) * pos).sum(0) / pos.sum(0).clamp(min=1)  # (C,)
    ce_neg = (F.softplus(margin) * neg).sum(0) / neg.sum(0).clamp(min=1)  # (C,)
    return (0.5 * (ce_pos + ce_neg))[both].mean()
