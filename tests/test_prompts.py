"""Prompt sets as data: the shipped sets, their content hashes, bad files, the label-embedding cache key, and
the zero-shot spread over a set's templates (checked against scikit-learn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import make_manifest, read_manifest, write_manifest
from cxrfa.errors import CxrfaError
from cxrfa.explore import zero_shot
from cxrfa.explore.prompt_spread import prompt_spread, write_prompt_spread
from cxrfa.labels import display_name, prompts_for
from cxrfa.models.cache import FeatureCache
from cxrfa.models.registry import build_encoder
from cxrfa.prompts import list_prompt_sets, load_prompt_set

# the templates cxrfa had in code before they became prompt sets: `default` must reproduce them exactly
ORIGINAL = (
    "a chest x-ray showing {}.",
    "chest radiograph with findings of {}.",
    "{} is present.",
    "there is {}.",
    "findings consistent with {}.",
)
ORIGINAL_NEGATIVE = (
    "a chest x-ray with no {}.",
    "no evidence of {}.",
    "{} is absent.",
    "there is no {}.",
    "no findings of {}.",
)
MICRO_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LABELS = ["Mass", "Effusion", "Pleural_Thickening"]


def test_default_set_is_the_original_templates_and_chexzero_differs() -> None:
    assert {"default", "chexzero"} <= set(list_prompt_sets())
    for label in ("Pleural_Thickening", "Mass"):
        name = display_name(label)
        assert prompts_for(label) == [t.format(name) for t in ORIGINAL]
        assert prompts_for(label, negative=True) == [t.format(name) for t in ORIGINAL_NEGATIVE]
        assert prompts_for(label, prompts="chexzero") == [name]
        assert prompts_for(label, negative=True, prompts="chexzero") == [f"no {name}"]
    default, chexzero = load_prompt_set("default"), load_prompt_set("chexzero")
    assert default.content_hash != chexzero.content_hash and len(default.content_hash) == 12


def test_a_set_is_named_by_path_and_hashed_by_content(tmp_path: Path) -> None:
    copy = tmp_path / "mine.yaml"
    copy.write_text("name: mine\npositive: ['{label}']\nnegative: ['no {label}']\n")
    mine = load_prompt_set(str(copy))
    assert mine.name == "mine" and mine.content_hash == load_prompt_set("chexzero").content_hash
    copy.write_text("name: mine\npositive: ['{label} seen']\nnegative: ['no {label}']\n")
    assert load_prompt_set(str(copy)).content_hash != mine.content_hash  # an edited file is a new set


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\npositive: ['a {label}']\nnegative: ['b {label}', 'c {label}']\n", "pair them one to one"),
        ("name: x\npositive: ['a chest x-ray']\nnegative: ['no {label}']\n", "positive[0]"),
        ("name: x\npositive: ['{label} {other}']\nnegative: ['no {label}']\n", "exactly once"),
        (
            "name: x\npositive: ['{label}']\nnegative: ['no {label}']\ntemplates: []\n",
            "templates: unknown key",
        ),
        ("positive: ['{label}']\nnegative: ['no {label}']\n", "name: missing"),
    ],
)
def test_a_bad_prompt_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CxrfaError, match="bad.yaml") as err:
        load_prompt_set(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_set_lists_the_known_ones() -> None:
    with pytest.raises(CxrfaError, match="known: .*chexzero.*default"):
        load_prompt_set("chexzer0")


@pytest.fixture(scope="module")
def micro_encoder(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("micro")
    config = folder / "cxrfa-test-prompts-clip.json"
    config.write_text(json.dumps(MICRO_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    return build_encoder(BackboneConfig(name="clip", arch=config.stem, pretrained=None))


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        labels = {lab: int(rng.random() < 0.4) for lab in LABELS}
        rows.append({"path": f"images/{i}.png", "patient_id": f"p{i}", "split": "test", **labels})
    rows[0]["Mass"] = None  # unknown: masked out of every AUROC
    return write_manifest(make_manifest(pd.DataFrame(rows), root, LABELS, "custom"), root / "manifest.csv")


def test_label_embeddings_follow_the_prompt_set(micro_encoder: object, tmp_path: Path) -> None:
    default = micro_encoder.label_embeddings(LABELS)  # type: ignore[attr-defined]
    chexzero = micro_encoder.label_embeddings(LABELS, prompts="chexzero")  # type: ignore[attr-defined]
    assert not torch.allclose(default, chexzero)
    # the chexzero embedding is the one template's text embedding, normalised
    with torch.inference_mode():
        direct = torch.nn.functional.normalize(
            micro_encoder.encode_text([display_name(lab) for lab in LABELS]).float(),  # type: ignore[attr-defined]
            dim=-1,
        )
    torch.testing.assert_close(chexzero, direct, atol=1e-5, rtol=1e-5)
    copy = tmp_path / "same.yaml"
    copy.write_text("name: same\npositive: ['{label}']\nnegative: ['no {label}']\n")
    again = micro_encoder.label_embeddings(LABELS, prompts=str(copy))  # type: ignore[attr-defined]
    torch.testing.assert_close(again, chexzero)


def _sklearn_zero_shot(
    encoder: object, manifest_path: Path, positive: str, negative: str
) -> dict[str, float]:
    """Per-label zero-shot AUROC of one template pair, computed independently of cxrfa's scoring code."""
    manifest = read_manifest(manifest_path)
    _, emb = FeatureCache(enabled=False).encode_dataset(encoder, manifest, progress=False)  # type: ignore[arg-type]
    img = torch.nn.functional.normalize(emb.double(), dim=-1)
    with torch.inference_mode():
        pos = torch.nn.functional.normalize(
            encoder.encode_text([positive.format(label=display_name(lab)) for lab in LABELS]).double(),
            dim=-1,  # type: ignore[attr-defined]
        )
        neg = torch.nn.functional.normalize(
            encoder.encode_text([negative.format(label=display_name(lab)) for lab in LABELS]).double(),
            dim=-1,  # type: ignore[attr-defined]
        )
    score = (img @ pos.T - img @ neg.T).numpy()  # the softmax at the positive is monotone in this difference
    y = manifest.label_matrix()
    out = {}
    for j, lab in enumerate(LABELS):
        known = np.isfinite(y[:, j])
        out[lab] = roc_auc_score(y[known, j], score[known, j])
    return out


def test_two_prompt_sets_give_two_results_and_the_spread_is_written(
    micro_encoder: object, toy_manifest: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(toy_manifest)
    cache = FeatureCache(tmp_path / "features")
    results = {
        name: prompt_spread(micro_encoder, manifest, "test", name, cache)  # type: ignore[arg-type]
        for name in ("default", "chexzero")
    }
    assert results["default"]["prompt_hash"] != results["chexzero"]["prompt_hash"]
    assert results["default"]["ensemble"]["auc"] != results["chexzero"]["ensemble"]["auc"]
    # the default set's ensemble is exactly what `explore zeroshot` reports
    _, macro = zero_shot(micro_encoder, manifest, "test", cache)  # type: ignore[arg-type]
    assert results["default"]["ensemble"]["macro_auc"] == pytest.approx(macro, abs=1e-12)
    default = load_prompt_set("default")
    templates = results["default"]["templates"]
    assert len(templates) == 5
    for i, entry in enumerate(templates):
        expected = _sklearn_zero_shot(micro_encoder, toy_manifest, default.positive[i], default.negative[i])
        for lab in LABELS:
            assert entry["auc"][lab] == pytest.approx(expected[lab], abs=1e-9)
        assert entry["macro_auc"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    macros = np.array([t["macro_auc"] for t in templates])
    spread = results["default"]["spread"]["macro_auc"]
    assert spread["min"] == pytest.approx(macros.min()) and spread["max"] == pytest.approx(macros.max())
    assert spread["std"] == pytest.approx(macros.std(ddof=1))
    assert results["chexzero"]["spread"]["macro_auc"]["std"] == 0.0  # one template: no spread
    for result in results.values():
        write_prompt_spread(result, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert set(written["prompt_sets"]) == {"default", "chexzero"}
    assert written["prompt_sets"]["chexzero"]["prompt_hash"] == load_prompt_set("chexzero").content_hash
