"""Forward/backward of every DESIGN.md cell configuration on CPU, with tiny encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrfa.config import DEMO_BACKBONES, LossConfig, ModelConfig
from cxrfa.labels import NIH14
from cxrfa.losses import compute_terms, weighted_total
from cxrfa.models import AlignmentModel, build_model

LABELS = list(NIH14)
CLIP = DEMO_BACKBONES.backbones["clip"].model_copy(update={"pretrained": None})
BIOMED = DEMO_BACKBONES.backbones["biomedclip"].model_copy(update={"pretrained": None})
CUSTOM = DEMO_BACKBONES.backbones["custom"]
SMALL = {"width": 32, "heads": 2}

CELLS = {
    "visual-clip": (ModelConfig(visual=CLIP, **SMALL), LossConfig()),
    "visual-biomedclip": (ModelConfig(visual=BIOMED, **SMALL), LossConfig()),
    "visual-custom": (ModelConfig(visual=CUSTOM, **SMALL), LossConfig()),
    "dual-clip": (
        ModelConfig(visual=CLIP, text=CLIP, t2_layers=1, aligner=True, output="mean", **SMALL),
        LossConfig(semantic=1.0),
    ),
    "dual-custom": (
        ModelConfig(visual=CUSTOM, text=CLIP, t2_layers=1, aligner=True, output="mean", **SMALL),
        LossConfig(semantic=1.0),
    ),
    "dual-learned": (
        ModelConfig(visual=CLIP, queries="learned", t2_layers=1, aligner=True, output="mean", **SMALL),
        LossConfig(semantic=1.0),
    ),
    "align-clip": (
        ModelConfig(visual=CLIP, text=CLIP, t2_layers=1, orthogonal=True, aligner=True, output="b", **SMALL),
        LossConfig(semantic=1.0, domain=0.5, orth=0.5, consistency=0.5, report=0.5),
    ),
}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("cell", list(CELLS))
def test_cell_forward_backward(cell: str) -> None:
    torch.manual_seed(0)
    cfg, loss_cfg = CELLS[cell]
    model = build_model(cfg, LABELS, report=loss_cfg.report > 0)
    model.train()
    b, c = 4, len(LABELS)
    images = torch.randn(b, 3, model.encoder.image_size, model.encoder.image_size)
    targets = torch.zeros(b, c)
    targets[0, 2] = targets[1, 5] = targets[2, 2] = 1
    targets[3, 0] = float("nan")
    reports = None
    if loss_cfg.report > 0:
        reports = model.encode_reports(["Large right effusion.", None, "Large right effusion.", "Clear."])
        assert torch.isnan(reports[1]).all() and torch.equal(reports[0], reports[2])
    out = model(images, reports)
    assert out["logits"].shape == out["logits_a"].shape == (b, c)
    assert out["pooled"].shape == (b, cfg.width)
    if cfg.aligner:
        assert out["logits_b"].shape == (b, c)
        assert out["features"].shape == (b, c, cfg.width)
        assert out["labels_emb"].shape == (c, cfg.width)
        assert ("label_text" in dict(model.heads.named_buffers())) == (cfg.queries == "text")
        assert torch.allclose(out["labels_emb"].norm(dim=-1), torch.ones(c), atol=1e-5)
    else:
        assert "logits_b" not in out and "features" not in out
    terms = compute_terms(out, targets, loss_cfg)
    expected = {"cls"} | {k for k, v in loss_cfg.weights.items() if v > 0}
    assert set(terms) == expected
    total = weighted_total(terms, loss_cfg)
    assert torch.isfinite(total)
    total.backward()
    head_grads = [p.grad for p in model.heads.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in head_grads)
    enc_grads = [p.grad for p in model.encoder.parameters()]
    if cfg.visual.frozen:
        assert all(g is None for g in enc_grads)
        assert not model.encoder.training  # frozen encoders stay in eval mode under model.train()
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)


def test_output_choice_and_forward_features() -> None:
    torch.manual_seed(0)
    text = torch.randn(5, 12)
    tokens, emb = torch.randn(2, 7, 16), torch.randn(2, 12)
    for output in ("a", "b", "mean"):
        cfg = ModelConfig(visual=CLIP, text=CLIP, aligner=True, output=output, width=16, heads=2)
        heads = AlignmentModel(cfg, 16, 7, text, 5).eval()
        out = heads(tokens, emb)
        mean_p = (
            torch.sigmoid(out["logits_a"]) + torch.sigmoid(out["logits_b"])
        ) / 2  # averaged probabilities
        want = {"a": out["logits_a"], "b": out["logits_b"], "mean": torch.logit(mean_p)}[output]
        assert torch.allclose(out["logits"], want, atol=1e-5)
    # classifier B is the cosine between F and L̂ over tau plus a bias
    cfg = ModelConfig(visual=CLIP, text=CLIP, aligner=True, output="b", width=16, heads=2, tau=0.5)
    heads = AlignmentModel(cfg, 16, 7, text, 5).eval()
    out = heads(tokens, emb)
    cos = torch.nn.functional.cosine_similarity(out["features"], out["labels_emb"][None], dim=-1)
    assert torch.allclose(out["logits_b"], (cos - heads.threshold_b) / 0.5, atol=1e-5)
    assert "label_text" in dict(heads.named_buffers())  # frozen label text is a buffer, not a parameter


def test_aligner_features_come_from_the_image_only() -> None:
    """F[b, c] must not contain the label embedding: when every token is the same (and positions are off),
    attention weights cannot matter and every label reads the same feature, whatever its query."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        visual=CLIP, text=CLIP, aligner=True, output="b", width=16, heads=2, t1_layers=0, dropout=0
    )
    heads = AlignmentModel(cfg, 16, 7, torch.randn(5, 12), 5).eval()
    constant = torch.ones(1, 7, 16)  # every token identical: attention weights cannot matter
    heads.t1_pos.data.zero_()
    heads.aligner.key_pos.data.zero_()
    feats = heads(constant, constant.mean(1))["features"][0]  # (C, d)
    assert torch.allclose(feats, feats[0].expand_as(feats), atol=1e-5)  # the same read for every label


def test_prior_initialises_calibrated_probabilities() -> None:
    cfg = ModelConfig(visual=CLIP, text=CLIP, aligner=True, output="mean", width=16, heads=2)
    heads = AlignmentModel(cfg, 16, 7, torch.randn(5, 12), 5).eval()
    prior = torch.tensor([0.01, 0.05, 0.1, 0.2, 0.5])
    heads.init_prior(prior)
    with torch.no_grad():
        heads.head_a[1].weight.zero_()  # classifier A is its bias
        out = heads(torch.randn(3, 7, 16), torch.randn(3, 12))
        # classifier B at a cosine score of 0 predicts the prior
        at_zero = -heads.threshold_b * heads.logit_scale.exp()
    assert torch.allclose(torch.sigmoid(out["logits_a"]), prior.expand(3, -1), atol=1e-5)
    assert torch.allclose(torch.sigmoid(at_zero), prior, atol=1e-5)


def test_learned_queries_need_no_text_and_text_cells_need_prototypes() -> None:
    with pytest.raises(ValueError, match="queries: learned"):
        ModelConfig(visual=CLIP, aligner=True)
    with pytest.raises(ValueError, match="uses no text"):
        ModelConfig(visual=CLIP, text=CLIP, queries="learned", aligner=True)


def test_build_model_shares_encoder_and_caches_label_embeddings(tmp_path: Path) -> None:
    cfg = ModelConfig(visual=CLIP, text=CLIP, aligner=True, width=16, heads=2)
    torch.manual_seed(0)
    model = build_model(cfg, LABELS[:3])
    assert model.text_encoder is model.encoder
    first = model.heads.label_text.clone()
    assert first.shape == (3, model.encoder.embed_dim)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    cached = list((tmp_path / "home" / "features" / "labels").rglob("*.bin"))
    assert len(cached) == 1
    # a second call reads the file instead of running the text tower
    calls = []
    original = model.encoder.encode_text
    model.encoder.encode_text = lambda texts: calls.append(texts) or original(texts)  # type: ignore[method-assign]
    again = model.encoder.label_embeddings(LABELS[:3])
    assert calls == [] and torch.equal(again, first)
    reports = model.encode_reports(["no acute findings.", "large effusion."])
    assert reports.shape == (2, model.encoder.embed_dim)
    # a set of report texts is encoded once: a second call reads the cache
    calls.clear()
    again = model.encode_reports(["large effusion.", None, "no acute findings."])
    assert calls == [] and torch.equal(again[0], reports[1]) and torch.equal(again[2], reports[0])
