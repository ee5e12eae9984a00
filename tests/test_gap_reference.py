"""One modality gap everywhere (the class-balanced one of ``losses.modality_gap_vector``), for one embedding per
image as for per-label features, and a no-image reference beside it: the gap term alone can close the gap
without the image, so a gap is read against the gap of features that ignore the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfa.config import BackboneConfig, ModelConfig
from cxrfa.explore import explore_model
from cxrfa.explore.gap import measured_gap, no_image_gap
from cxrfa.explore.report import write_gap_report
from cxrfa.models.alignment import AlignmentModel


def _aligned(n: int = 30, c: int = 3, d: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image (N, D) is exactly the text embedding of its one label; label 0 in 27 images, 1 and 2 in 3."""
    rng = np.random.default_rng(0)
    txt = rng.normal(size=(c, d))
    which = np.array([0] * (n - 2 * (n // 10)) + [1] * (n // 10) + [2] * (n // 10))
    y = np.eye(c)[which]
    return 2.0 * txt[which], txt, y


def _balanced(feats: np.ndarray, txt: np.ndarray, y: np.ndarray) -> float:
    """Independent numpy: mean over present labels of (centroid of their images' unit features − unit text)."""
    unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    t_hat = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    cols = [c for c in range(len(txt)) if (y[:, c] == 1).any()]
    per_label = unit if unit.ndim == 3 else np.repeat(unit[:, None], len(txt), axis=1)
    centroids = np.stack([per_label[y[:, c] == 1, c].mean(0) for c in cols])
    return float(np.linalg.norm(centroids.mean(0) - t_hat[cols].mean(0)))


def test_explore_gap_without_a_run_reports_the_balanced_gap_and_a_no_image_reference(tmp_path: Path) -> None:
    img, txt, y = _aligned()
    write_gap_report(img, txt, y, tmp_path, step=0.5)
    summary = json.loads((tmp_path / "gap.json").read_text())
    assert summary["modality_gap"] == pytest.approx(0.0, abs=1e-9)  # the centroid gap said 0.6 here
    # features that ignore the image (every image its mean) are far from the texts: the reference
    assert summary["modality_gap_no_image"] == pytest.approx(no_image_gap(img, txt, y).norm, abs=1e-12)
    assert summary["modality_gap_no_image"] > 0.3
    rng = np.random.default_rng(1)
    noisy = img + rng.normal(size=img.shape)
    assert measured_gap(noisy, txt, y).norm == pytest.approx(_balanced(noisy, txt, y), abs=1e-9)


def test_a_constant_image_sits_at_its_no_image_reference() -> None:
    """What the gap² term alone reaches without the image: a gap equal to its reference, however small."""
    rng = np.random.default_rng(2)
    feats = np.repeat(rng.normal(size=(1, 3, 5)), 20, axis=0)  # (N, C, D): the same for every image
    txt = rng.normal(size=(3, 5))
    y = (rng.random((20, 3)) < 0.4).astype(float)
    assert measured_gap(feats, txt, y).norm == pytest.approx(no_image_gap(feats, txt, y).norm, abs=1e-12)
    assert measured_gap(feats, txt, y).norm == pytest.approx(_balanced(feats, txt, y), abs=1e-12)


def test_explore_model_reports_the_pooled_gap_balanced_and_the_no_image_reference() -> None:
    torch.manual_seed(0)
    labels = ["a", "b", "c", "d"]
    clip = BackboneConfig(name="clip", arch="x")
    cfg = ModelConfig(visual=clip, text=clip, width=16, heads=2, t2_layers=1, aligner=True, output="mean")
    heads = AlignmentModel(cfg, 10, 6, torch.randn(4, 12), 4).eval()
    tokens, embedding = torch.randn(24, 6, 10), torch.randn(24, 12)
    y = (torch.rand(24, 4) < 0.4).double().numpy()
    s = explore_model(heads, tokens, embedding, y, labels, parts=("gap",)).scalars
    with torch.no_grad():
        out = heads(tokens, embedding)
    pooled, feats, lab = out["pooled"].numpy(), out["features"].numpy(), out["labels_emb"].numpy()
    assert s["embed/modality_gap_pooled"] == pytest.approx(_balanced(pooled, lab, y), abs=1e-5)
    assert s["embed/modality_gap"] == pytest.approx(_balanced(feats, lab, y), abs=1e-5)
    mean_feats = np.repeat(
        (feats / np.linalg.norm(feats, axis=-1, keepdims=True)).mean(0, keepdims=True), 24, 0
    )
    assert s["embed/modality_gap_no_image"] == pytest.approx(_balanced(mean_feats, lab, y), abs=1e-5)
