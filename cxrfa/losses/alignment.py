"""The geometry terms between image features and label prototypes: the class-balanced modality gap (the one
definition behind the ``domain`` loss and every reported gap), the domain alignment built on it, CORAL across
domain groups and the orthogonality of the label embeddings."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _class_means(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Means over the batch of (B, C, *D) values where the (B, C) boolean mask holds -> (C, *D), has-any (C,)."""
    m = mask.to(values.dtype).reshape(*mask.shape, *[1] * (values.dim() - 2))  # (B, C, 1…): broadcasts over D
    return (values * m).sum(0) / m.sum(0).clamp(min=1), mask.any(0)


def modality_gap_vector(features: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
    """The class-balanced modality gap (D,): over the labels present in the batch, the mean of each label's
    image-side centroid (F̂[b, c] averaged over the images with c) minus the mean of their prototypes L̂[c].

    Each present label counts once on both sides, so perfectly aligned features (F̂[b, c] = L̂[c]) give exactly
    0 whatever the label frequencies. The one definition behind the ``domain`` loss, ``embed/modality_gap``,
    ``embed/modality_gap_pooled`` and ``cxrfa explore gap``; zero when no label is present.

    Args:
        features: (B, C, D) per-label image-side features, or (B, D) one embedding per image that stands for
            each of its labels (normalised here).
        prototypes: (C, D) label prototypes (normalised here).
        targets: (B, C) 1/0/NaN.
    """
    present_mask = targets == 1
    if features.dim() == 2:  # (B, D): class means as one product, without a (B, C, D) copy
        weights = present_mask.to(features.dtype)  # (B, C)
        centroids = weights.T @ F.normalize(features, dim=-1) / weights.sum(0).clamp(min=1).unsqueeze(-1)
        present = present_mask.any(0)
    else:
        centroids, present = _class_means(F.normalize(features, dim=-1), present_mask)  # (C, D), (C,)
    if not present.any():
        return features.sum() * 0.0 + features.new_zeros(features.shape[-1])
    return centroids[present].mean(0) - F.normalize(prototypes, dim=-1)[present].mean(0)


def centroid_contrast(scores: Tensor, targets: Tensor, tau: float) -> Tensor:
    """mean_c softplus(-(m⁺_c - m⁻_c) / τ) over labels with a known positive and a known negative, where m±_c is
    the mean (B, C) score of the images with / without c. Image-independent scores give log 2 (chance)."""
    m_pos, has_pos = _class_means(scores, targets == 1)
    m_neg, has_neg = _class_means(scores, targets == 0)
    both = has_pos & has_neg
    if not both.any():
        return scores.sum() * 0.0
    return F.softplus(-(m_pos - m_neg)[both] / tau).mean()


def domain_alignment(
    features: Tensor, scores: Tensor, prototypes: Tensor, targets: Tensor, tau: float, kind: str = "centroid"
) -> Tensor:
    """Domain-level alignment: close the modality gap class by class, without losing the image.

    ``‖gap‖²`` of :func:`modality_gap_vector` (``kind="mmd"``: the RBF MMD² between the present pairs' features
    and their prototypes), which a model could satisfy without looking at the image, plus
    :func:`centroid_contrast`, which it cannot: the term's chance value is log 2.

    Args:
        features: (B, C, D) per-label image-side features.
        scores: (B, C) cos(F[b, c], L̂[c]).
        prototypes: (C, D) label prototypes.
        targets: (B, C) 1/0/NaN.
    """
    if kind == "mmd":
        b_idx, c_idx = torch.nonzero(targets == 1, as_tuple=True)
        f_hat, p_hat = F.normalize(features[b_idx, c_idx], dim=-1), F.normalize(prototypes[c_idx], dim=-1)
        gap = rbf_mmd(f_hat, p_hat) if b_idx.numel() else features.sum() * 0.0
    else:
        gap = modality_gap_vector(features, prototypes, targets).pow(2).sum()
    return gap + centroid_contrast(scores, targets, tau)


def rbf_mmd(x: Tensor, y: Tensor, sigmas: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Biased MMD² between sets x (n, d) and y (m, d) with a sum of RBF kernels; 0 for identical sets."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)  # (n, m)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in sigmas)  # type: ignore[return-value]

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def coral(x: Tensor, groups: Tensor) -> Tensor:
    """CORAL: mean squared Frobenius gap between each domain's feature covariance and the others' (pairs)."""
    covs = []
    for g in torch.unique(groups):
        xg = x[groups == g]
        if xg.shape[0] > 1:
            xc = xg - xg.mean(0, keepdim=True)
            covs.append(xc.T @ xc / (xg.shape[0] - 1))  # (d, d)
    if len(covs) < 2:
        return x.sum() * 0.0
    d = x.shape[1]
    gaps = [
        (covs[i] - covs[j]).pow(2).sum() / (4 * d * d)
        for i in range(len(covs))
        for j in range(i + 1, len(covs))
    ]
    return torch.stack(gaps).mean()


def orthogonality(labels_emb: Tensor) -> Tensor:
    """mean((L̂ L̂ᵀ - I)²) over normalised (C, d) label embeddings; 0 for orthonormal rows. Independent random
    directions in d dimensions give (1 - 1/C) / d in expectation (its chance value)."""
    lab = F.normalize(labels_emb, dim=-1)
    eye = torch.eye(lab.shape[0], device=lab.device)
    return (lab @ lab.T - eye).pow(2).mean()
