"""explore_model on the real alignment heads (tiny widths), checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfa.config import BackboneConfig, ModelConfig
from cxrfa.explore import explore_model, mean_offdiag, similarity_matrix
from cxrfa.models.alignment import AlignmentModel

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Nodule"]
BACKBONE = BackboneConfig(name="clip", arch="cxrfa-tiny-clip")


def _heads(**switches: object) -> AlignmentModel:
    torch.manual_seed(0)
    cfg = ModelConfig(visual=BACKBONE, width=16, heads=2, **switches)
    label_text = torch.nn.functional.normalize(torch.randn(len(LABELS), 12), dim=-1)  # (C, De_t)
    text = label_text if cfg.text is not None else None
    return AlignmentModel(cfg, 10, 6, text, len(LABELS))


def _inputs(m: int = 24) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(m, 6, 10, generator=g).half()  # (M, N, Dv) fp16 as from the feature cache
    embedding = torch.randn(m, 12, generator=g).half()  # (M, De)
    y = (torch.rand(m, len(LABELS), generator=g) < 0.4).double().numpy()
    y[0, 0] = np.nan
    return tokens, embedding, y


def test_explore_model_measures_gap_and_stage_similarities() -> None:
    heads = _heads(text=BACKBONE, t2_layers=1, orthogonal=True, aligner=True, output="mean")
    tokens, embedding, y = _inputs()
    heads.train()
    result = explore_model(heads, tokens, embedding, y, LABELS, batch_size=7)  # batches of 7: 4 passes
    assert heads.training  # mode restored

    heads.eval()
    with torch.no_grad():
        out = heads(tokens.float(), embedding.float())
        final = heads.label_embeddings().numpy()
    feats, lab_hat = out["features"].numpy(), out["labels_emb"].numpy()
    present = np.nan_to_num(y) == 1
    s = result.scalars
    # class-balanced: each present label's centroid counts once, against that label's embedding
    f_hat = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    cols = [c for c in range(len(LABELS)) if present[:, c].any()]
    centroids = np.stack([f_hat[present[:, c], c].mean(0) for c in cols])
    expected_gap = np.linalg.norm(centroids.mean(0) - lab_hat[cols].mean(0))
    assert s["embed/modality_gap"] == pytest.approx(expected_gap, abs=1e-5)
    p_hat = out["pooled"].numpy() / np.linalg.norm(out["pooled"].numpy(), axis=-1, keepdims=True)
    pooled_centroids = np.stack([p_hat[present[:, c]].mean(0) for c in cols])  # each label once, as above
    assert s["embed/modality_gap_pooled"] == pytest.approx(
        np.linalg.norm(pooled_centroids.mean(0) - lab_hat[cols].mean(0)), abs=1e-5
    )
    raw = heads.label_text.numpy()
    raw_cos = raw @ raw.T / np.outer(np.linalg.norm(raw, axis=1), np.linalg.norm(raw, axis=1))
    expected_raw = (raw_cos.sum() - np.trace(raw_cos)) / (len(LABELS) * (len(LABELS) - 1))
    assert s["embed/mean_offdiag_sim/raw"] == pytest.approx(expected_raw, abs=1e-6)
    assert s["embed/mean_offdiag_sim/final"] == pytest.approx(
        mean_offdiag(similarity_matrix(final)), abs=1e-6
    )
    assert {
        "embed/mean_offdiag_sim/centred",
        "embed/mean_offdiag_sim/projected",
        "embed/mean_offdiag_sim/t2",
        "embed/mean_offdiag_sim/orth",
        "embed/align_macro_auc",
    } <= set(s)
    assert all(np.isfinite(v) for v in s.values())

    panels = [ax for ax in result.figures["label_similarity"].axes if ax.images and ax.get_title()]
    assert len(panels) == 5  # raw, centred, projected, after transformer2, after orthogonal module (= final)
    assert "final" in panels[-1].get_title()
    frame = result.tables["gap_shift"]
    assert frame.loc[np.isclose(frame["delta"], 0.0), "gap"].item() == pytest.approx(s["embed/modality_gap"])
    assert result.figures["gap_shift"].axes


def test_explore_model_without_aligner_uses_pooled_features_and_visual_only_is_empty() -> None:
    tokens, embedding, y = _inputs(10)
    dual = explore_model(_heads(text=BACKBONE), tokens, embedding, y, LABELS)
    assert dual.scalars["embed/modality_gap"] == pytest.approx(dual.scalars["embed/modality_gap_pooled"])
    assert "embed/mean_offdiag_sim/t2" not in dual.scalars
    visual_only = explore_model(_heads(), tokens, embedding, y, LABELS)
    assert visual_only.scalars == {} and visual_only.figures == {}
