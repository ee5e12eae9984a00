"""Each loss term pinned on hand-computed cases; compute_terms / weighted_total wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss
from torch.nn import functional as F

from cxrfa.config import LossConfig
from cxrfa.losses import (
    ASL,
    Consistency,
    DomainAlignment,
    Expression,
    Focal,
    MaskedBCE,
    Orthogonality,
    SemanticInfoNCE,
    SupCon,
    compute_terms,
    coral,
    rbf_mmd,
    weighted_total,
)

NAN = float("nan")


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    targets = torch.tensor(
        [[1, 0, NAN, 0], [0, 1, 1, NAN], [NAN, NAN, 0, 1], [1, 1, 0, 0], [0, NAN, 0, 0], [1, 0, 0, 1]],
        dtype=torch.float32,
    )
    return logits, targets


def test_masked_bce_ignores_unknown_exactly(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    known = torch.isfinite(targets)
    probs = torch.sigmoid(logits[known]).double().numpy()
    expected = log_loss(targets[known].numpy(), probs, labels=[0, 1])
    assert MaskedBCE()(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    # changing a logit at an unknown position changes nothing
    moved = logits.clone()
    moved[~known] += 100.0
    assert MaskedBCE()(moved, targets).item() == pytest.approx(expected, rel=1e-5)
    ref = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert MaskedBCE()(logits, targets).item() == pytest.approx(ref.item(), rel=1e-6)


def test_asl_and_focal_reduce_to_bce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    bce = MaskedBCE()(logits, targets).item()
    assert ASL(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets).item() == pytest.approx(bce, rel=1e-5)
    assert Focal(gamma=0)(logits, targets).item() == pytest.approx(bce, rel=1e-5)
    # focusing down-weights easy examples: strictly smaller than BCE
    assert Focal(gamma=2)(logits, targets).item() < bce
    assert ASL()(logits, targets).item() < bce


def test_asl_clip_discards_easy_negatives() -> None:
    logits = torch.tensor([[math.log(0.04 / 0.96)]])  # p = 0.04 < clip 0.05
    assert ASL(gamma_neg=4, clip=0.05)(logits, torch.zeros(1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_orthogonality_zero_for_orthonormal_rows() -> None:
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert Orthogonality()(q[:5]).item() == pytest.approx(0.0, abs=1e-10)
    same = torch.ones(3, 4)  # all rows identical: off-diagonals 1 -> 6 / 9
    assert Orthogonality()(same).item() == pytest.approx(6 / 9, rel=1e-6)


def test_infonce_falls_as_pairs_align() -> None:
    torch.manual_seed(0)
    labels = F.normalize(torch.randn(4, 16), dim=-1)  # (C, d)
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    noise = torch.randn(3, 4, 16)
    losses = []
    for alpha in (0.0, 0.5, 1.0, 3.0):
        feats = noise + alpha * labels.unsqueeze(0)  # (B, C, d): F[b, c] moves toward L̂[c]
        losses.append(SemanticInfoNCE(tau=0.1)(feats, labels, targets).item())
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses
    # hand check of one pair: only (1, 1) present -> CE over cosine logits
    t = torch.zeros(3, 4)
    t[1, 1] = 1
    feats = noise
    expected = F.cross_entropy((F.normalize(feats[1, 1], dim=-1) @ labels.T / 0.1)[None], torch.tensor([1]))
    assert SemanticInfoNCE(0.1)(feats, labels, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_infonce_adds_report_clip_loss() -> None:
    torch.manual_seed(1)
    feats, labels, targets = torch.randn(4, 3, 8), torch.randn(3, 8), torch.zeros(4, 3)
    pooled = torch.randn(4, 8)
    assert SemanticInfoNCE()(feats, labels, targets).item() == 0.0
    with_reports = SemanticInfoNCE()(feats, labels, targets, pooled, pooled * 2).item()
    mismatched = SemanticInfoNCE()(feats, labels, targets, pooled, pooled.flip(0)).item()
    assert 0 < with_reports < mismatched


def test_mmd_zero_for_identical_sets_and_positive_otherwise() -> None:
    x = torch.randn(10, 5)
    assert rbf_mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert rbf_mmd(x, x + 3.0).item() > 0.1
    labels = F.normalize(torch.randn(3, 5), dim=-1)
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.float32)
    feats = labels.unsqueeze(0).repeat(2, 1, 1) * 4.0  # image features equal (after norm) to text: gap 0
    for kind in ("mmd", "centroid"):
        assert DomainAlignment(kind)(feats, labels, targets).item() == pytest.approx(0.0, abs=1e-6)
        assert DomainAlignment(kind)(torch.randn(2, 3, 5), labels, targets).item() > 0


def test_coral_zero_for_same_covariance() -> None:
    x = torch.randn(20, 4)
    groups = torch.tensor([0] * 10 + [1] * 10)
    same = torch.cat([x[:10], x[:10] + 5.0])  # shift only: covariances identical
    assert coral(same, groups).item() == pytest.approx(0.0, abs=1e-6)
    scaled = torch.cat([x[:10], x[:10] * 3.0])
    assert coral(scaled, groups).item() > 0


def test_consistency_expression_supcon() -> None:
    a = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert Consistency(0.1)(a, a).item() < Consistency(0.1)(a, a.flip(0)).item()
    targets = torch.tensor([[1.0, 0.0], [0.0, NAN]])
    expected = ((torch.sigmoid(a[0]) - targets[0]).pow(2).sum() + (torch.sigmoid(a[1, 0]) - 0).pow(2)) / 3
    assert Expression()(a, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    assert SupCon(0.1)(clustered, y).item() < SupCon(0.1)(clustered.flip(0)[[0, 2, 1, 3]], y).item()


def _out(b: int = 4, c: int = 3, d: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    return {
        "logits": la, "logits_a": la, "logits_b": lb, "features": torch.randn(b, c, d, generator=g),
        "labels_emb": F.normalize(torch.randn(c, d, generator=g), dim=-1), "pooled": torch.randn(b, d, generator=g),
    }  # fmt: skip


def test_compute_terms_only_weighted_terms_and_total() -> None:
    targets = torch.tensor([[1, 0, NAN], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    assert set(compute_terms(_out(), targets, LossConfig())) == {"cls"}
    cfg = LossConfig(
        semantic=0.5, domain=0.2, orth=1.0, consistency=0.1, expression=2.0, supcon=0.3, coral=0.4
    )
    terms = compute_terms(_out(), targets, cfg, domains=torch.tensor([0, 0, 1, 1]))
    assert set(terms) == {"cls", "semantic", "domain", "orth", "consistency", "expression", "supcon", "coral"}
    assert all(torch.isfinite(t) for t in terms.values())
    total = weighted_total(terms, cfg)
    w = {**cfg.weights, "coral": 0.4}
    assert total.item() == pytest.approx(sum(w[k] * v.item() for k, v in terms.items()), rel=1e-5)
    # visual-only output: alignment terms are skipped even with weights on
    vis = {k: v for k, v in _out().items() if k in ("logits", "logits_a", "pooled")}
    assert set(compute_terms(vis, targets, cfg)) == {"cls", "expression", "supcon"}
    with pytest.raises(KeyError):
        weighted_total({"mystery": torch.tensor(1.0)}, cfg.weights)


def test_cls_choice_follows_config() -> None:
    targets = torch.tensor([[1, 0, 0], [0, 1, NAN], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    out = _out()
    bce = compute_terms(out, targets, LossConfig())["cls"].item()
    focal = compute_terms(out, targets, LossConfig(cls="focal"))["cls"].item()
    asl = compute_terms(out, targets, LossConfig(cls="asl"))["cls"].item()
    assert len({round(bce, 6), round(focal, 6), round(asl, 6)}) == 3
    heads = compute_terms(out, targets, LossConfig(cls_on_heads=True))["cls"].item()
    expected = (2 * MaskedBCE()(out["logits_a"], targets) + MaskedBCE()(out["logits_b"], targets)) / 3
    assert heads == pytest.approx(expected.item(), rel=1e-6)
    assert np.isfinite([bce, focal, asl]).all()
