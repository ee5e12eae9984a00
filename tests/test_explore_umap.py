"""The one UMAP test (numba JIT is slow): layout reproducible for a seed, PNG and offline HTML written."""

from __future__ import annotations

import json
import re

import numpy as np

from cxrfa.explore import image_groups, umap_layout
from cxrfa.explore.report import write_umap_report

LABELS = ["Atelectasis", "Effusion", "Pleural_Thickening"]


def test_umap_layout_is_seeded_and_reports_are_written(tmp_path) -> None:
    rng = np.random.default_rng(0)
    txt = rng.normal(size=(3, 16))
    y = np.zeros((30, 3))
    y[np.arange(30), np.arange(30) % 3] = 1.0
    y[27:] = 0.0  # three images without findings
    y[0, 1] = np.nan
    img = y[:, :3].copy()
    img = np.nan_to_num(img) @ txt + 0.3 * rng.normal(size=(30, 16))

    first = umap_layout(img, txt, y, LABELS, dims=2, seed=3)
    again = umap_layout(img, txt, y, LABELS, dims=2, seed=3)
    np.testing.assert_array_equal(first.image_xy, again.image_xy)
    np.testing.assert_array_equal(first.text_xy, again.text_xy)
    assert first.image_xy.shape == (30, 2) and first.text_xy.shape == (3, 2)
    assert image_groups(y, LABELS)[:4] == ["Atelectasis", "Effusion", "Pleural_Thickening", "Atelectasis"]
    assert first.groups[-1] == "No finding"

    ids = [f"images/{i:03d}.png" for i in range(30)]
    paths = write_umap_report(img, txt, y, LABELS, tmp_path, dims=3, seed=3, image_ids=ids)
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    page = paths["html"].read_text()
    assert "pleural thickening" in page and "images/029.png" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded from elsewhere
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert data["dims"] == 3 and len(data["points"]) == 30 and len(data["stars"]) == 3
    assert all(len(p["p"]) == 3 and max(abs(v) for v in p["p"]) <= 1.0 for p in data["points"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_explore_model_umap_part_places_features_and_label_stars() -> None:
    import pytest
    import torch

    from cxrfa.config import BackboneConfig, ModelConfig
    from cxrfa.errors import CxrfaError
    from cxrfa.explore import explore_model
    from cxrfa.models.alignment import AlignmentModel

    torch.manual_seed(0)
    bb = BackboneConfig(name="clip", arch="cxrfa-tiny-clip")
    cfg = ModelConfig(visual=bb, text=bb, width=16, heads=2, aligner=True)
    heads = AlignmentModel(cfg, image_dim=10, label_text=torch.randn(3, 12), num_labels=3)
    y = np.zeros((12, 3))
    y[np.arange(12), np.arange(12) % 3] = 1.0  # one present disease per image: 12 feature points
    result = explore_model(heads, torch.randn(12, 5, 10), torch.randn(12, 12), y, LABELS, parts=("umap",))
    assert set(result.figures) == {"umap"} and result.scalars.keys() == {"embed/modality_gap_pooled"}
    ax = result.figures["umap"].axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12 + 3  # features + label stars
    with pytest.raises(CxrfaError, match="unknown exploration part"):
        explore_model(heads, torch.randn(2, 5, 10), torch.randn(2, 12), y[:2], LABELS, parts=("tsne",))
