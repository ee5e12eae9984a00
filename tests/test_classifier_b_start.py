"""Classifier B starts at the prior: its thresholds account for the non-zero cosines of an untrained aligner (with
θ_c = -logit(prior)·τ alone it started at 0.04-6.8x the prevalence on the demo features)."""

from __future__ import annotations

import math

import numpy as np
import torch
from _helpers import tiny_heads
from torch.utils.data import Dataset

from cxrfa.config import LossConfig, TrainConfig
from cxrfa.train import fit

C, N, DV = 6, 6, 10
PRIOR = torch.tensor([0.01, 0.03, 0.08, 0.15, 0.3, 0.5])


class _Tokens(Dataset):
    """Encoder-like tokens (a shared offset, as frozen features have) with labels drawn at the prior."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randn(n, N, DV, generator=g) + torch.linspace(-2, 2, DV)
        self.labels = (torch.rand(n, C, generator=g) < PRIOR).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[i], "embedding": self.tokens[i].mean(0), "labels": self.labels[i]}


class _Features(torch.nn.Module):
    def __init__(self, heads: torch.nn.Module) -> None:
        super().__init__()
        self.heads = heads

    def forward_features(
        self, tokens: torch.Tensor, embedding: torch.Tensor, report: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.heads(tokens, embedding, report)


def _ratio(model: _Features, data: _Tokens) -> np.ndarray:
    """Mean probability of classifier B over held-out images, per label, over the prior."""
    model.eval()
    with torch.no_grad():
        out = model.forward_features(data.tokens, data.tokens.mean(1))
    return (torch.sigmoid(out["logits_b"]).mean(0) / PRIOR).numpy()


def test_classifier_b_starts_within_1_5x_of_the_prevalence_of_each_label() -> None:
    torch.manual_seed(0)
    held_out = _Tokens(2000, seed=2)
    model = _Features(tiny_heads(C, N, DV))
    model.heads.init_prior(PRIOR)
    before = _ratio(model, held_out)
    assert np.abs(np.log(before)).max() > math.log(1.5), before  # the untrained cosines are not 0
    # fit starts from the first training batch's cosines; lr ~0 leaves the start in place
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-12, device="cpu", warmup_frac=0.0)
    fit(
        model,
        _Tokens(600, seed=1),
        _Tokens(64, seed=3),
        [str(c) for c in range(C)],
        cfg,
        LossConfig(),
        progress=False,
    )
    after = _ratio(model, held_out)
    assert np.all((after > 1 / 1.5) & (after < 1.5)), after
