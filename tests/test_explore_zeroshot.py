"""Zero-shot end to end: a micro CLIP pretrained briefly (cxrfa.pretrain) on image-report pairs, then scored
with positive vs negated prompts; the finding is readable from the image, so AUROC must beat chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
from PIL import Image

from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import make_manifest, read_manifest, write_manifest
from cxrfa.explore import zero_shot
from cxrfa.labels import prompts_for
from cxrfa.models.cache import FeatureCache
from cxrfa.models.registry import build_encoder
from cxrfa.pretrain import pretrain

pytestmark = pytest.mark.slow

MICRO_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
LABELS = ["Mass", "Effusion"]


def _toy_dataset(root: Path, n: int = 80) -> Path:
    """32-px images: a bright disc (mass) upper left, a bright band (effusion) at the bottom, each present
    in about half the images; each report states or negates every finding in prompt-like wording."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        mass, effusion = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        img = rng.normal(60, 12, (32, 32))
        img[((yy - 10) ** 2 + (xx - 10) ** 2 < 50) & mass] += 140
        img[26:, :] += 120 * effusion
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        report = " ".join(
            str(rng.choice(prompts_for(lab, negative=not on)))
            for lab, on in zip(LABELS, (mass, effusion), strict=True)
        )
        split = "train" if i < 0.7 * n else ("val" if i < 0.8 * n else "test")
        rows.append(
            {
                "path": f"images/{i}.png",
                "patient_id": f"p{i}",
                "split": split,
                "report": report,
                "Mass": int(mass),
                "Effusion": int(effusion),
            }
        )
    rows[-1]["Mass"] = None  # an unknown label must be masked, not scored
    return write_manifest(make_manifest(pd.DataFrame(rows), root, LABELS, "custom"), root / "manifest.csv")


@pytest.fixture
def micro_clip(tmp_path: Path) -> str:
    config = tmp_path / "cxrfa-test-micro-clip.json"
    config.write_text(json.dumps(MICRO_CLIP))
    open_clip.add_model_config(config)
    return config.stem


def test_zero_shot_beats_chance_after_a_short_pretrain(tmp_path: Path, micro_clip: str) -> None:
    manifest = read_manifest(_toy_dataset(tmp_path / "data"))
    weights = tmp_path / "micro.pt"
    result = pretrain(manifest, micro_clip, weights, epochs=12, lr=2e-3, batch_size=32)
    assert result.losses[-1] < result.losses[0]
    encoder = build_encoder(BackboneConfig(name="clip", arch=micro_clip, pretrained=str(weights)))

    per_label, macro = zero_shot(encoder, manifest, "test", FeatureCache(tmp_path / "features"))
    assert set(per_label) == set(LABELS)
    assert all(auc > 0.6 for auc in per_label.values()), per_label
    assert macro == pytest.approx(np.mean(list(per_label.values())))
    assert macro > 0.75


def test_prompt_embeddings_are_the_encoders_label_embeddings(micro_clip: str) -> None:
    """One path for prompt embeddings: zero-shot reads the encoder's (cached) label embeddings, and those equal
    an explicit per-prompt reference (each prompt encoded alone, normalised, averaged, renormalised)."""
    import torch

    from cxrfa.explore import prompt_embeddings

    torch.manual_seed(0)
    encoder = build_encoder(BackboneConfig(name="clip", arch=micro_clip, pretrained=None))
    for negative in (False, True):
        got = prompt_embeddings(encoder, LABELS, negative=negative)  # (C, De)
        rows = []
        with torch.inference_mode():
            for lab in LABELS:
                emb = torch.cat([encoder.encode_text([p]).double() for p in prompts_for(lab, negative)])
                mean = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                rows.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        np.testing.assert_allclose(got, np.stack(rows), atol=1e-5)
    assert not np.allclose(
        prompt_embeddings(encoder, LABELS), prompt_embeddings(encoder, LABELS, negative=True)
    )
