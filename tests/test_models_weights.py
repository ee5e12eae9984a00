"""Encoder registry, weight loading from local files, the BiomedCLIP folder path and fast offline failures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from cxrfa.config import BackboneConfig
from cxrfa.errors import CxrfaError
from cxrfa.models import build_encoder, list_encoders
from cxrfa.models.weights import CONFIG_DIR

BIOMED_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("CXRFA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # empty ~/.cache/clip
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # empty HF cache


def test_registry_lists_entries_and_rejects_unknown() -> None:
    names = {info.name for info in list_encoders()}
    assert names == {"clip", "biomedclip", "custom"}
    assert {i.name: i.has_text for i in list_encoders()}["custom"] is False
    bogus = BackboneConfig.model_construct(
        name="vitamin", arch="x", pretrained=None, frozen=True, standin=False
    )
    with pytest.raises(CxrfaError, match="unknown encoder 'vitamin'; known: biomedclip, clip, custom"):
        build_encoder(bogus)
    with pytest.raises(CxrfaError, match="unknown custom CNN"):
        build_encoder(BackboneConfig(name="custom", arch="cxrfa-vgg"))


def test_saved_weights_load_through_the_pretrained_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = build_encoder(BackboneConfig(name="clip", arch="cxrfa-tiny-clip"))
    ckpt = tmp_path / "tiny.pt"
    torch.save(first.model.state_dict(), ckpt)
    cfg = BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained=str(ckpt))
    loaded, again = build_encoder(cfg), build_encoder(cfg)
    x = torch.randn(2, 3, loaded.image_size, loaded.image_size)
    with torch.no_grad():
        for a, b in zip(first.encode_image(x), loaded.encode_image(x), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(first.encode_text(["effusion"]), loaded.encode_text(["effusion"]), atol=1e-6)
    assert loaded.identity == again.identity  # content-addressed: same file, same identity
    assert loaded.identity != first.identity  # random init is identified by its own weights
    assert loaded.source == f"local:{ckpt}"
    torch.save({k: v + 1 for k, v in first.model.state_dict().items()}, ckpt)  # same path, new weights
    assert build_encoder(cfg).identity != loaded.identity


def test_custom_cnn_weights_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_encoder(BackboneConfig(name="custom", arch="cxrfa-cnn-small", frozen=False))
    path = tmp_path / "cnn.pt"
    torch.save(enc.net.state_dict(), path)
    loaded = build_encoder(BackboneConfig(name="custom", arch="cxrfa-cnn-small", pretrained=str(path)))
    x = torch.randn(2, 3, 64, 64)
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc.encode_image(x)[1], loaded.encode_image(x)[1], atol=1e-6)
    with pytest.raises(CxrfaError, match="has no text tower"):
        loaded.encode_text(["x"])


def _biomedclip_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A BiomedCLIP-architecture folder as published on the hub: open_clip config + BERT config + vocab + weights."""
    torch.manual_seed(0)
    enc = build_encoder(BackboneConfig(name="biomedclip", arch="cxrfa-tiny-biomedclip"))
    folder = tmp_path / "biomedclip-local"
    folder.mkdir()
    model_cfg = json.loads((CONFIG_DIR / "cxrfa-tiny-biomedclip.json").read_text())
    model_cfg["text_cfg"]["hf_model_name"] = (
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # remote name
    )
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    preprocess = {"mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276], "interpolation": "bicubic"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(CONFIG_DIR / "cxrfa-tiny-bert" / name, folder / name)
    torch.save(enc.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, enc


def test_biomedclip_local_folder(tmp_path: Path) -> None:
    folder, original = _biomedclip_dir(tmp_path)
    via_pretrained = build_encoder(BackboneConfig(name="biomedclip", arch=BIOMED_HUB, pretrained=str(folder)))
    via_schema = build_encoder(BackboneConfig(name="biomedclip", arch=f"local-dir:{folder}"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, emb = via_pretrained.encode_image(x)
        assert tokens.shape == (2, 16, 64) and emb.shape == (2, 128)  # timm trunk patch tokens, cls dropped
        assert torch.allclose(emb, original.encode_image(x)[1], atol=1e-5)
        assert torch.allclose(emb, via_schema.encode_image(x)[1], atol=1e-6)
        text = via_pretrained.encode_text(["a chest x-ray showing effusion."])
        assert torch.allclose(text, original.encode_text(["a chest x-ray showing effusion."]), atol=1e-5)
    assert "Normalize(mean=[0.481" in repr(via_pretrained.preprocess)  # the folder's preprocessing is used
    assert via_pretrained.identity != original.identity  # different preprocessing -> different cache key


@pytest.mark.parametrize(
    ("cfg", "names"),
    [
        (BackboneConfig(name="clip", arch="ViT-B-16", pretrained="openai"), "ViT-B-16/openai"),
        (BackboneConfig(name="biomedclip", arch=BIOMED_HUB), "open_clip_config.json"),
    ],
)
def test_offline_missing_weights_fail_fast_in_one_line(cfg: BackboneConfig, names: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CxrfaError) as err:
        build_encoder(cfg)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and names in message and "not available offline" in message


def test_unresolved_demo_and_missing_file_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match="pretrained='demo' is unresolved"):
        build_encoder(BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained="demo", standin=True))
    with pytest.raises(CxrfaError, match="does not exist"):
        build_encoder(
            BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained=str(tmp_path / "nope.pt"))
        )
    with pytest.raises(CxrfaError, match="unknown open_clip architecture"):
        build_encoder(BackboneConfig(name="clip", arch="ViT-Nope"))


def test_check_open_clip_resolves_every_file_without_building(tmp_path: Path) -> None:
    from cxrfa.models.weights import check_open_clip
    from cxrfa.preflight import check_backbone

    folder, _ = _biomedclip_dir(tmp_path)
    check_open_clip(BIOMED_HUB, str(folder))  # weights, config, text tower and tokenizer all local
    check_backbone(BackboneConfig(name="biomedclip", arch=f"local-dir:{folder}"))
    (folder / "vocab.txt").unlink()  # the tokenizer now points at the hub, which is offline
    with pytest.raises(
        CxrfaError, match="tokenizer 'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract' is not"
    ):
        check_open_clip(BIOMED_HUB, str(folder))
    with pytest.raises(CxrfaError, match="ViT-B-16/openai .* is not available offline"):
        check_backbone(BackboneConfig(name="clip", arch="ViT-B-16", pretrained="openai"))
    check_backbone(BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained="demo", standin=True))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("name", ["clip", "custom"])
def test_a_crafted_weights_file_is_refused_in_one_line(tmp_path: Path, name: str) -> None:
    from cxrfa.preflight import check_backbone

    marker, path = tmp_path / "marker", tmp_path / "weights.pt"
    torch.save({"visual.proj": torch.zeros(2), "x": _Payload(marker)}, path)
    arch = "cxrfa-tiny-clip" if name == "clip" else "cxrfa-cnn-small"
    cfg = BackboneConfig(name=name, arch=arch, pretrained=str(path), frozen=name == "clip")
    with pytest.raises(
        CxrfaError, match=rf"^{path}: refused to load: .*(Unsupported global: GLOBAL exec)"
    ) as err:
        build_encoder(cfg)
    assert "\n" not in str(err.value) and not marker.exists()
    if name == "custom":  # the preflight reads custom weights the same way, before any run
        with pytest.raises(CxrfaError, match="refused to load"):
            check_backbone(cfg)
        assert not marker.exists()
