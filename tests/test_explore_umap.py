"""The UMAP tests (few, and all in this file: numba's JIT costs ~15 s in each process that first fits a UMAP,
so they share one pytest worker): a seeded layout whose label stars keep their own places across a modality
gap, the interactive page's colourings, the per-disease feature view, and ``cxrfa explore umap``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_explore_cli import _run, setup  # noqa: F401 - its small synthetic set and backbones

from cxrfa.explore import (
    image_attributes,
    image_groups,
    label_slots,
    name_positions,
    umap_layout,
    umap_plotly,
)
from cxrfa.explore.report import write_umap_report

pytestmark = pytest.mark.slow

LABELS = ["Atelectasis", "Effusion", "Pleural_Thickening", "Mass"]


def _gapped_set(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images around 4 label directions, texts = the same directions plus a large shared offset (the modality
    gap): texts are far closer to one another (cos ~0.85) than to any image, as in a contrastive model."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(24, 5)))[0].T  # (5, 24) orthonormal: 4 labels + gap axis
    y = np.zeros((n, 4))
    y[np.arange(n), np.arange(n) % 4] = 1.0
    img = y @ directions[:4] + 0.15 * rng.normal(size=(n, 24))
    txt = 0.4 * directions[:4] + 1.0 * directions[4]
    return img, txt, y


def test_layout_is_seeded_and_label_stars_stay_apart_across_the_gap() -> None:
    img, txt, y = _gapped_set()
    cos = txt @ txt.T / np.outer(np.linalg.norm(txt, axis=1), np.linalg.norm(txt, axis=1))
    assert cos[~np.eye(4, dtype=bool)].min() > 0.8  # the texts alone would form one tight clump
    first = umap_layout(img, txt, y, LABELS, seed=3)
    again = umap_layout(img, txt, y, LABELS, seed=3)
    np.testing.assert_array_equal(first.image_xy, again.image_xy)
    np.testing.assert_array_equal(first.text_xy, again.text_xy)
    assert first.image_xy.shape == (48, 2) and first.text_xy.shape == (4, 2)
    # each star lands among its own label's images, not in one spot with the other stars
    centroids = np.stack([first.image_xy[y[:, j] == 1].mean(0) for j in range(4)])  # (4, 2)
    nearest = np.linalg.norm(first.text_xy[:, None] - centroids[None], axis=-1).argmin(axis=1)
    assert nearest.tolist() == [0, 1, 2, 3]
    star_gaps = np.linalg.norm(first.text_xy[:, None] - first.text_xy[None], axis=-1)[~np.eye(4, dtype=bool)]
    assert star_gaps.min() > 0.2 * np.ptp(first.image_xy, axis=0).max()


def test_groups_attributes_and_name_slots() -> None:
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, np.nan, 1], [np.nan, 0, 0]])
    assert image_groups(y, LABELS[:3]) == [
        "Atelectasis",
        "Multiple findings",
        "No finding",
        "Pleural_Thickening",
        "No finding",
    ]
    frame = pd.DataFrame(
        {
            "domain": ["a", None, "b"],
            "view": ["PA", "AP", "PA"],
            "sex": ["F", "M", "M"],
            "age": [19, 80, None],
        }
    )
    assert image_attributes(frame) == {
        "site": ["a", "unknown", "b"],
        "view": ["PA", "AP", "PA"],
        "sex": ["F", "M", "M"],
        "age": ["0-20", "80plus", "unknown"],
    }
    names = ["atelectasis", "effusion", "mass", "hernia", "nodule", "pleural thickening", "edema"]
    xy = np.array([[0, 0], [0.1, 0.2], [0.2, -0.1], [50, 50], [80, 0], [30, 80], [33, 82]], dtype=float)
    slots = label_slots(xy, names, extent=np.array([100.0, 100.0]))
    assert slots[3] == slots[4] == (0, -1.3)  # lone stars: the name above
    assert sorted(slots[:3]) == [(1, 0.0), (1, 1.0), (1, 2.0)] and slots[1] == (1, 0.0)  # a column, top first
    assert slots[5:] == [(1, 1.0), (1, 0.0)]  # 3 apart, but one name above would cover the other star
    text, left = name_positions(xy, names, extent=np.array([100.0, 100.0]))
    step = 0.035 * 100  # one line
    np.testing.assert_allclose(text[3], xy[3] + [0, 1.3 * step])  # centred above its star
    assert left.tolist() == [True, True, True, False, False, True, True]
    np.testing.assert_allclose(text[[1, 0, 2], 1], 0.2 - step * np.arange(3))  # one column, a line apart
    assert len(set(text[:3, 0])) == 1 and text[0, 0] > xy[:3, 0].max()


def test_report_page_is_offline_plotly_with_colourings(tmp_path) -> None:
    img, txt, y = _gapped_set(n=40, seed=1)
    y[0, 1] = 1.0  # one image with two findings
    y[1, 2] = np.nan
    rng = np.random.default_rng(0)
    attrs = {"site": list(rng.choice(["site-a", "site-b"], 40)), "view": ["PA"] * 40, "sex": ["F", "M"] * 20}
    ids = [f"images/{i:03d}.png" for i in range(40)]
    paths = write_umap_report(
        img, txt, y, LABELS, tmp_path, seed=3, image_ids=ids, attributes=attrs, max_images=30
    )
    page = paths["html"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded from elsewhere
    assert "plotly.js" in page and len(page) > 3_000_000  # the library itself is embedded
    assert "a random 30 of 40, seed 3" in page and "colour by" in page
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files

    keep = np.sort(np.random.default_rng(3).choice(40, size=30, replace=False))
    fig = umap_plotly(
        umap_layout(
            img[keep],
            txt,
            y[keep],
            LABELS,
            seed=3,
            image_ids=[ids[i] for i in keep],
            attributes={k: [v[i] for i in keep] for k, v in attrs.items()},
        )
    )
    menu = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert menu == [
        "finding",
        "site",
        "view",
        "sex",
        *[f"label: {n}" for n in ("atelectasis", "effusion", "pleural thickening", "mass")],
    ]

    def shown(label: str) -> dict[str, object]:
        button = fig.layout.updatemenus[0].buttons[menu.index(label)]
        return {t.name: t for t, v in zip(fig.data, button.args[0]["visible"], strict=True) if v}

    site = shown("site")
    counts = pd.Series([attrs["site"][i] for i in keep]).value_counts()
    assert {f"{k} ({v})" for k, v in counts.items()} | {"label texts"} == set(site)
    effusion = shown("label: effusion")
    assert f"present ({int((y[keep, 1] == 1).sum())})" in effusion
    stars = effusion["label texts"]
    assert list(stars.text) == ["atelectasis", "effusion", "pleural thickening", "mass"]
    assert list(stars.marker.size) == [22, 34, 22, 22]  # the chosen label's star stands out
    finding = shown("finding")
    n_multi = sum(1 for i in keep if (y[i] == 1).sum() > 1)
    assert (f"multiple findings ({n_multi})" in finding) == (n_multi > 0)
    assert sum(len(t.x) for name, t in finding.items() if name != "label texts") == 30  # each image once
    hover = next(iter(site.values())).hovertext[0]
    assert hover.startswith("images/") and "site: site-" in hover and "findings:" in hover
    assert {a["text"] for a in fig.layout.annotations} >= {f"<b>{n}</b>" for n in stars.text}

    three = write_umap_report(img, txt, y, LABELS, tmp_path / "3d", dims=3, seed=3)
    assert '"type":"scatter3d"' in three["html"].read_text()


def test_explore_model_umap_part_places_features_and_label_stars() -> None:
    import torch

    from cxrfa.config import BackboneConfig, ModelConfig
    from cxrfa.errors import CxrfaError
    from cxrfa.explore import explore_model
    from cxrfa.models.alignment import AlignmentModel

    torch.manual_seed(0)
    bb = BackboneConfig(name="clip", arch="cxrfa-tiny-clip")
    cfg = ModelConfig(visual=bb, text=bb, width=16, heads=2, aligner=True)
    tokens = {"num_tokens": 5} if "num_tokens" in inspect.signature(AlignmentModel).parameters else {}
    heads = AlignmentModel(cfg, image_dim=10, label_text=torch.randn(3, 12), num_labels=3, **tokens)
    y = np.zeros((12, 3))
    y[np.arange(12), np.arange(12) % 3] = 1.0  # one present disease per image: 12 feature points
    labels = LABELS[:3]
    result = explore_model(heads, torch.randn(12, 5, 10), torch.randn(12, 12), y, labels, parts=("umap",))
    assert set(result.figures) == {"umap"} and result.scalars.keys() == {"embed/modality_gap_pooled"}
    ax = result.figures["umap"].axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12 + 3  # features + label stars
    with pytest.raises(CxrfaError, match="unknown exploration part"):
        explore_model(heads, torch.randn(2, 5, 10), torch.randn(2, 12), y[:2], labels, parts=("tsne",))


def test_umap_writes_an_offline_page_with_site_view_sex_colourings(
    setup: tuple[Path, Path],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    from cxrfa.data.manifest import read_manifest

    manifest, backbones = setup
    common = ["--backbone", "clip", "--backbones", str(backbones), "--data", str(manifest), "--device", "cpu"]
    res = _run("umap", *common, "--out", str(tmp_path), "--max-images", "6", "--no-feature-cache")
    assert res.exit_code == 0, res.output
    assert (
        "UMAP: fitting 6 points" in res.output
    )  # long steps say what they do (spinner), then how long they took
    page = (tmp_path / "umap.html").read_text()
    n_test = len(read_manifest(manifest).split("test"))
    assert f"6 images (a random 6 of {n_test}, seed 0)" in page
    for colouring in ("finding", "site", "view", "sex", "age", "label: effusion"):
        assert f'"label":"{colouring}"' in page, colouring
    assert (tmp_path / "umap.png").read_bytes()[:4] == b"\x89PNG"
