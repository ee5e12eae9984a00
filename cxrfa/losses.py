"""Every loss term as a small module returning an unweighted scalar; weights are applied only in
:func:`weighted_total`.

Targets are (B, C) floats: 1, 0 or NaN (unknown). Unknown entries are excluded exactly: they contribute
neither to a sum nor to its count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cxrfa.config import LossConfig


def _known_mean(values: Tensor, known: Tensor) -> Tensor:
    """Mean of ``values`` over ``known`` entries (0, still differentiable, when none are known)."""
    total = (values * known).sum()
    return total / known.sum().clamp(min=1)


def _split(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C) targets with NaN -> (targets with NaN as 0, known mask as float)."""
    known = torch.isfinite(targets)
    return torch.where(known, targets, torch.zeros_like(targets)), known.float()


class MaskedBCE(nn.Module):
    """Binary cross-entropy averaged over known (non-NaN) label entries."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:  # (B, C), (B, C)
        y, known = _split(targets)
        return _known_mean(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), known)


class Focal(nn.Module):
    """Focal loss: BCE scaled by (1 - p_t)^gamma; gamma = 0 is BCE."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split(targets)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, C)
        p_t = torch.exp(-bce)  # probability of the true class
        return _known_mean(bce * (1 - p_t).pow(self.gamma), known)


class ASL(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021): separate focusing for positives/negatives, and a probability
    margin ``clip`` that discards easy negatives. gamma_pos = gamma_neg = clip = 0 is BCE."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split(targets)
        p = torch.sigmoid(logits)
        log_p = F.logsigmoid(logits)
        if self.clip > 0:
            p_neg = (p - self.clip).clamp(min=0)  # shifted probability for negatives
            log_1mp = torch.log((1 - p_neg).clamp(min=1e-8))
        else:
            p_neg = p
            log_1mp = F.logsigmoid(-logits)
        pos = y * log_p * (1 - p).pow(self.gamma_pos)
        neg = (1 - y) * log_1mp * p_neg.pow(self.gamma_neg)
        return _known_mean(-(pos + neg), known)


def clip_loss(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE between paired rows of a (B, d) and b (B, d) (row i of a matches row i of b)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class SemanticInfoNCE(nn.Module):
    """For each present disease (b, c), F[b, c] must match L̂[c] against the other labels' embeddings; plus a
    CLIP loss between pooled image features and report embeddings when those are given."""

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        self.tau = tau

    def forward(
        self, features: Tensor, labels_emb: Tensor, targets: Tensor,
        pooled: Tensor | None = None, report_emb: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        b_idx, c_idx = torch.nonzero(targets == 1, as_tuple=True)  # present pairs (P,)
        loss = features.sum() * 0.0  # keeps the graph when no disease is present in the batch
        if b_idx.numel():
            feats = F.normalize(features[b_idx, c_idx], dim=-1)  # (P, d)
            logits = feats @ F.normalize(labels_emb, dim=-1).T / self.tau  # (P, C)
            loss = loss + F.cross_entropy(logits, c_idx)
        if pooled is not None and report_emb is not None and pooled.shape[0] > 1:
            loss = loss + clip_loss(pooled, report_emb, self.tau)
        return loss


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


class DomainAlignment(nn.Module):
    """Closes the modality gap: MMD (RBF) or centroid gap between the normalised image-side features of
    present diseases, F̂[b, c], and their text embeddings L̂[c]."""

    def __init__(self, kind: str = "mmd") -> None:
        super().__init__()
        self.kind = kind

    def forward(self, features: Tensor, labels_emb: Tensor, targets: Tensor) -> Tensor:
        b_idx, c_idx = torch.nonzero(targets == 1, as_tuple=True)
        if not b_idx.numel():
            return features.sum() * 0.0
        x = F.normalize(features[b_idx, c_idx], dim=-1)  # (P, d) image side
        y = F.normalize(labels_emb[c_idx], dim=-1)  # (P, d) text side
        if self.kind == "centroid":
            return (x.mean(0) - y.mean(0)).pow(2).sum()
        return rbf_mmd(x, y)


class Orthogonality(nn.Module):
    """mean((L̂ L̂ᵀ - I)²) over normalised label embeddings; 0 for orthonormal rows."""

    def forward(self, labels_emb: Tensor) -> Tensor:  # (C, d)
        lab = F.normalize(labels_emb, dim=-1)
        eye = torch.eye(lab.shape[0], device=lab.device)
        return (lab @ lab.T - eye).pow(2).mean()


class Consistency(nn.Module):
    """Contrastive loss between the two classifiers' probability vectors: the same image is the positive."""

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, logits_a: Tensor, logits_b: Tensor) -> Tensor:  # (B, C), (B, C)
        if logits_a.shape[0] < 2:
            return (logits_a.sum() + logits_b.sum()) * 0.0
        return clip_loss(torch.sigmoid(logits_a), torch.sigmoid(logits_b), self.tau)


class Expression(nn.Module):
    """Masked MSE between predicted probabilities and the label vector ("vector output expression")."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split(targets)
        return _known_mean((torch.sigmoid(logits) - y).pow(2), known)


class SupCon(nn.Module):
    """Multi-label supervised contrastive loss on pooled image features: images sharing at least one positive
    label (or both having none) are positives."""

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, pooled: Tensor, targets: Tensor) -> Tensor:  # (B, d), (B, C)
        y = (targets == 1).float()  # unknown counts as not positive
        y = torch.cat([y, (y.sum(1, keepdim=True) == 0).float()], dim=1)  # (B, C+1): "no finding" column
        pos = (y @ y.T > 0).float()  # (B, B)
        eye = torch.eye(pos.shape[0], device=pos.device)
        pos = pos * (1 - eye)
        z = F.normalize(pooled, dim=-1)
        sim = (z @ z.T / self.tau).masked_fill(eye.bool(), float("-inf"))  # (B, B), self excluded
        log_prob = F.log_softmax(sim, dim=1).masked_fill(eye.bool(), 0.0)
        has_pos = pos.sum(1) > 0
        if not has_pos.any():
            return pooled.sum() * 0.0
        per_anchor = -(log_prob * pos).sum(1)[has_pos] / pos.sum(1)[has_pos]
        return per_anchor.mean()


def cls_criterion(cfg: LossConfig) -> nn.Module:
    """The classification loss a config chooses."""
    if cfg.cls == "asl":
        return ASL(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
    if cfg.cls == "focal":
        return Focal(cfg.focal_gamma)
    return MaskedBCE()


def compute_terms(
    out: Mapping[str, Tensor], targets: Tensor, cfg: LossConfig, domains: Tensor | None = None
) -> dict[str, Tensor]:
    """Unweighted loss terms for one batch.

    Args:
        out: the model's output dict (``logits``, ``logits_a``, optional ``logits_b``, ``features``,
            ``labels_emb``, ``pooled``, ``report_emb``).
        targets: (B, C) 1/0/NaN.
        cfg: which terms are on (weight > 0) and their hyper-parameters.
        domains: optional (B,) integer domain ids for CORAL.

    Returns:
        ``cls`` always; every other term whose weight is > 0 and whose inputs exist in ``out``. ``coral`` is
        its own term (weight ``cfg.coral``), present when domains are given.
    """
    crit = cls_criterion(cfg)
    cls = crit(out["logits"], targets)
    if cfg.cls_on_heads and "logits_b" in out:
        cls = (cls + crit(out["logits_a"], targets) + crit(out["logits_b"], targets)) / 3
    terms: dict[str, Tensor] = {"cls": cls}
    w = cfg.weights
    has_align = "features" in out and "labels_emb" in out
    if w["semantic"] > 0 and has_align:
        terms["semantic"] = SemanticInfoNCE(cfg.tau)(
            out["features"], out["labels_emb"], targets, out.get("pooled"), out.get("report_emb")
        )
    if w["domain"] > 0 and has_align:
        terms["domain"] = DomainAlignment(cfg.domain_kind)(out["features"], out["labels_emb"], targets)
    if cfg.coral > 0 and domains is not None:
        terms["coral"] = coral(out["pooled"], domains)
    if w["orth"] > 0 and "labels_emb" in out:
        terms["orth"] = Orthogonality()(out["labels_emb"])
    if w["consistency"] > 0 and "logits_b" in out:
        terms["consistency"] = Consistency(cfg.tau)(out["logits_a"], out["logits_b"])
    if w["expression"] > 0:
        terms["expression"] = Expression()(out["logits"], targets)
    if w["supcon"] > 0:
        terms["supcon"] = SupCon(cfg.tau)(out["pooled"], targets)
    return terms


def loss_weights(cfg: LossConfig) -> dict[str, float]:
    """Weight per term name, including ``coral`` (the CORAL part of domain alignment)."""
    return {**cfg.weights, "coral": cfg.coral}


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float] | LossConfig) -> Tensor:
    """Σ weight[name] · term — the one place weights are applied.

    Args:
        terms: from :func:`compute_terms`.
        weights: weight per term name, or a :class:`LossConfig` (then :func:`loss_weights`).

    Raises:
        KeyError: a term without a weight (a bug: every term must be tunable).
    """
    if isinstance(weights, LossConfig):
        weights = loss_weights(weights)
    missing = [name for name in terms if name not in weights]
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}; weights: {sorted(weights)}")
    return torch.stack([terms[name] * float(weights[name]) for name in terms]).sum()
