"""The classification terms: masked BCE, focal and ASL on each classifier's logits (``cls``), and the masked
MSE of probabilities against the label vector (``expression``).

Targets are (B, C) floats: 1, 0 or NaN (unknown). Unknown entries are excluded exactly: they contribute
neither to a sum nor to its count.
"""

from __future__ import annotations

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


def expression(logits: Tensor, targets: Tensor) -> Tensor:
    """Masked MSE between predicted probabilities and the label vector ("vector output expression")."""
    y, known = _split(targets)
    return _known_mean((torch.sigmoid(logits) - y).pow(2), known)


def cls_criterion(cfg: LossConfig) -> nn.Module:
    """The classification loss a config chooses."""
    if cfg.cls == "asl":
        return ASL(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
    if cfg.cls == "focal":
        return Focal(cfg.focal_gamma)
    return MaskedBCE()
