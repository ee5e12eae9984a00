"""The contrastive terms: InfoNCE with several positives, the symmetric CLIP loss (``report``), the per-label
image contrast (``semantic``), the contrast of the two classifiers' outputs (``consistency``) and the
multi-label supervised contrast of pooled image features (``supcon``).

Each contrasts *images* (with vs without a label, an image vs the other reports), never labels against labels
within one image, so none of them can be satisfied by features that ignore the image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def multi_positive_nce(logits: Tensor, positive: Tensor) -> Tensor:
    """Mean over rows with a positive of -log(Σ_pos exp(logit) / Σ_all exp(logit)); (R, K) logits and mask."""
    rows = positive.any(1)
    if not rows.any():
        return logits.sum() * 0.0
    log_all = torch.logsumexp(logits[rows], dim=1)
    log_pos = torch.logsumexp(logits[rows].masked_fill(~positive[rows], float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def clip_logits_loss(logits: Tensor, positive: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE on a (B, B) logit matrix: row i matches column i, and any pair marked in the optional
    (B, B) ``positive`` mask (e.g. identical reports). Zero logits give the chance value."""
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    pos = eye if positive is None else positive | eye
    return 0.5 * (multi_positive_nce(logits, pos) + multi_positive_nce(logits.T, pos.T))


def clip_loss(a: Tensor, b: Tensor, tau: float, positive: Tensor | None = None) -> Tensor:
    """:func:`clip_logits_loss` of the cosine similarities of rows of a (B, d) and b (B, d), over τ."""
    return clip_logits_loss(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau, positive)


def label_contrast(scores: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Per label, images that have it must score above images that do not (InfoNCE over the batch's images).

    For a known positive (b, c): ``log(exp(s_bc/τ) + Σ_{n ∈ neg(c)} exp(s_nc/τ)) - s_bc/τ``, averaged over the
    positives of labels that also have a known negative in the batch; unknown entries are neither. Scores that
    do not depend on the image give exactly ``log(1 + |neg(c)|)`` per positive: the chance value, and (by
    Jensen) a lower bound of the expected loss of any scores independent of the labels.

    Args:
        scores: (B, C) similarity of each image's label-c feature to prototype c.
        targets: (B, C) 1/0/NaN.
    """
    pos, neg = targets == 1, targets == 0
    valid = pos & neg.any(0, keepdim=True)
    if not valid.any():
        return scores.sum() * 0.0
    s = scores / tau
    neg_lse = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=0, keepdim=True)  # (1, C)
    return (torch.logaddexp(s, neg_lse) - s)[valid].mean()


def consistency(logits_a: Tensor, logits_b: Tensor, tau: float) -> Tensor:
    """Contrastive loss between the two classifiers' (B, C) outputs: the same image is the positive.

    Logits are centred per label over the batch first, so the term compares which findings an image has
    *relative to the batch* (probabilities of rare findings are near 0 for every image, which would make all
    vectors alike). Image-independent outputs give the chance value log B.
    """
    if logits_a.shape[0] < 2:
        return (logits_a.sum() + logits_b.sum()) * 0.0
    return clip_loss(logits_a - logits_a.mean(0), logits_b - logits_b.mean(0), tau)


def supcon(sim: Tensor, targets: Tensor) -> Tensor:
    """Multi-label supervised contrastive loss on a (B, B) similarity/τ matrix of pooled image features:
    images sharing at least one present label (or both with none) are positives; zero ``sim`` is chance."""
    y = (targets == 1).float()  # unknown counts as not present
    y = torch.cat([y, (y.sum(1, keepdim=True) == 0).float()], dim=1)  # (B, C+1): a "no finding" column
    eye = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    pos = (y @ y.T > 0) & ~eye  # (B, B)
    if not pos.any():
        return sim.sum() * 0.0
    log_prob = F.log_softmax(sim.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    has_pos = pos.any(1)
    return (-(log_prob * pos).sum(1)[has_pos] / pos.sum(1)[has_pos]).mean()
