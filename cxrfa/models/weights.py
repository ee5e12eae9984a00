"""Building open_clip models from local files only, failing fast and in one line when weights are missing.

open_clip would otherwise try the network (and retry) for a missing tag. Here every weight source is resolved
to a local file *before* open_clip sees it: a tag is looked up in the Hugging Face cache (and the legacy
``~/.cache/clip`` URL cache), a ``hf-hub:`` model in the Hugging Face cache, a local directory or checkpoint
file as is. Downloads happen only when the hub is not switched off (``HF_HUB_OFFLINE``/``CXRFA_OFFLINE``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
_SAFE_ALTERNATIVES = {"open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
_registered = False


def register_model_configs() -> None:
    """Make the packaged demo architectures (``cxrfa-tiny-*``) known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def offline() -> bool:
    """True when downloads are switched off (``HF_HUB_OFFLINE=1`` or ``CXRFA_OFFLINE=1``)."""
    return any(
        os.environ.get(k, "").lower() in {"1", "true", "yes", "on"}
        for k in ("HF_HUB_OFFLINE", "CXRFA_OFFLINE")
    )


@dataclass
class OpenClipBundle:
    """An open_clip model with everything needed to use and identify it."""

    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP
    preprocess: Callable[[Any], torch.Tensor]  # eval transform
    tokenizer: Callable[[list[str]], torch.Tensor]
    weights_file: Path | None  # the file the weights were read from (None = random init)
    weights_tag: str  # human-readable weight source


def _hf_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in (_SAFE_ALTERNATIVES.get(filename), filename):
        if name is None:
            continue
        hit = try_to_load_from_cache(repo_id=repo, filename=name)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _missing(what: str, how: str) -> CxrfaError:
    return CxrfaError(f"{what} is not available offline; {how}")


def _resolve_tag(arch: str, tag: str) -> tuple[Path, dict[str, Any]]:
    """A pretrained tag -> a local weights file (download only when online) and the tag's config."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise CxrfaError(
            f"pretrained={tag!r} is neither a file nor a known open_clip tag for {arch!r} (tags: {known})"
        )
    looked: list[str] = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" -> default file; "org/repo/f.pt" -> f.pt
        filename = filename or "open_clip_pytorch_model.bin"
        hit = _hf_cached(repo, filename)
        if hit:
            return hit, cfg
        looked.append(f"HF cache {repo}/{filename}")
    if cfg.get("url"):
        legacy = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if legacy.is_file():
            return legacy, cfg
        looked.append(str(legacy))
    if offline():
        raise _missing(
            f"weights {arch}/{tag} (looked in {'; '.join(looked)})",
            'download them on a connected machine (python -c "import open_clip; '
            f"open_clip.create_model('{arch}', pretrained='{tag}')\") and copy the HF cache here, "
            "or set pretrained to a local checkpoint file",
        )
    try:
        return Path(download_pretrained(cfg)), cfg
    except Exception as err:  # network, auth, disk: all user-fixable
        raise CxrfaError(f"could not download weights {arch}/{tag}: {str(err).splitlines()[0]}") from None


def _hf_hub_dir(repo: str) -> Path:
    """The cached snapshot folder of a ``hf-hub:`` open_clip model, or a one-line error naming what is missing."""
    config = _hf_cached(repo, "open_clip_config.json")
    weights = _hf_cached(repo, "open_clip_pytorch_model.bin")
    if config and weights:
        return config.parent
    if offline():
        missing = "open_clip_config.json" if config is None else "open_clip_pytorch_model.bin"
        raise _missing(
            f"hf-hub:{repo} ({missing} not in the Hugging Face cache)",
            f"run `huggingface-cli download {repo}` on a connected machine and copy the cache here, "
            "or set pretrained to a local folder with open_clip_config.json, weights and tokenizer files",
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo))
    except Exception as err:
        raise CxrfaError(f"could not download hf-hub:{repo}: {str(err).splitlines()[0]}") from None


def _text_override(model_cfg: dict[str, Any], local_dir: Path | None) -> dict[str, Any] | None:
    """Point an HF text tower at local files: the packaged tiny BERT, or a BERT config inside ``local_dir``."""
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    name = text_cfg.get("hf_model_name")
    if not name:
        return None
    if (CONFIG_DIR / name / "config.json").is_file():
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(CONFIG_DIR / name)
    elif local_dir is not None and (local_dir / "config.json").is_file():
        text_cfg["hf_model_name"] = str(local_dir)
    text_cfg["hf_model_pretrained"] = False  # never fetch base tower weights; a full checkpoint is loaded
    return text_cfg


def _tokenizer(model_cfg: dict[str, Any], text_cfg: dict[str, Any] | None, local_dir: Path | None) -> Any:
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    cfg = text_cfg if text_cfg is not None else model_cfg.get("text_cfg", {})
    length = cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    if not cfg.get("hf_tokenizer_name"):
        return SimpleTokenizer(context_length=length)
    source = (
        str(local_dir)
        if local_dir is not None and (local_dir / "vocab.txt").exists()
        else cfg["hf_tokenizer_name"]
    )
    try:
        return HFTokenizer(source, context_length=length, **cfg.get("tokenizer_kwargs", {}))
    except OSError as err:
        raise CxrfaError(
            f"tokenizer {source!r} is not available locally ({str(err).splitlines()[0][:160]})"
        ) from None


def _require_transformers(model_cfg: dict[str, Any], what: str) -> None:
    if model_cfg.get("text_cfg", {}).get("hf_model_name"):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise CxrfaError(
                f"{what} has a Hugging Face text tower and needs `transformers`: pip install 'cxrfa[biomedclip]'"
            ) from None


def create_open_clip(arch: str, pretrained: str | None, device: str | torch.device = "cpu") -> OpenClipBundle:
    """Build an open_clip model from local files.

    Args:
        arch: an open_clip architecture (``ViT-B-16``, ``cxrfa-tiny-clip``), ``hf-hub:org/repo`` or
            ``local-dir:/path``.
        pretrained: a tag (``openai``), a checkpoint file, a folder (open_clip_config.json + weights +
            tokenizer files), or None for random init. Ignored for ``hf-hub:``/``local-dir:`` archs that carry
            their own weights.
        device: where to put the model.

    Raises:
        CxrfaError: unknown architecture, or weights/tokenizer files missing (one line, says how to fix).
    """
    import open_clip
    from open_clip.factory import get_model_config, parse_model_name

    register_model_configs()
    if pretrained and Path(pretrained).expanduser().is_dir():
        arch, pretrained = f"local-dir:{Path(pretrained).expanduser().resolve()}", None
    schema, ident = parse_model_name(arch)
    local_dir: Path | None = None
    weights_file: Path | None = None
    force_pre: dict[str, Any] = {}
    quick_gelu = False
    tag = "scratch"
    if schema == "hf-hub":
        local_dir = _hf_hub_dir(ident)
        tag = arch
    elif schema == "local-dir":
        local_dir = Path(ident).expanduser().resolve()
        if not (local_dir / "open_clip_config.json").is_file():
            raise CxrfaError(
                f"{local_dir}: no open_clip_config.json; a model folder needs it plus weights + tokenizer"
            )
        tag = f"local:{local_dir}"
    if local_dir is not None:
        raw = json.loads((local_dir / "open_clip_config.json").read_text())
        model_cfg, pre = raw.get("model_cfg", raw), raw.get("preprocess_cfg", {})
        force_pre = {k: v for k, v in pre.items() if k != "size"}
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(local_dir)
        if found is None:
            raise CxrfaError(
                f"{local_dir}: no weights file (open_clip_pytorch_model.bin / *.safetensors / *.pth)"
            )
        weights_file = Path(found)
        arch_for_oc = f"local-dir:{local_dir}"
    else:
        model_cfg = get_model_config(arch)
        if model_cfg is None:
            raise CxrfaError(
                f"unknown open_clip architecture {arch!r}; see open_clip.list_models() or `cxrfa models list`"
            )
        arch_for_oc = arch
        if pretrained:
            path = Path(pretrained).expanduser()
            if path.is_file():
                weights_file, tag = path.resolve(), f"file:{path.name}"
            elif pretrained == "demo":
                raise CxrfaError(
                    f"{arch}: pretrained='demo' is unresolved; pretrain the stand-in first "
                    "(cxrfa.models.ensure_standin, or `cxrfa pretrain --data MANIFEST --arch "
                    f"{arch} --out FILE` and set pretrained to FILE)"
                )
            elif "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
                raise CxrfaError(
                    f"weights file {pretrained} does not exist; give an existing checkpoint path"
                )
            else:
                weights_file, tag_cfg = _resolve_tag(arch, pretrained)
                force_pre = {
                    k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
                }
                quick_gelu = bool(tag_cfg.get("quick_gelu", False))
                tag = f"tag:{pretrained}"
    _require_transformers(model_cfg, arch)
    text_cfg = _text_override(model_cfg, local_dir)
    kwargs: dict[str, Any] = {"text_cfg": text_cfg} if text_cfg is not None else {}
    try:
        model = open_clip.create_model(
            arch_for_oc,
            pretrained=str(weights_file) if weights_file is not None and local_dir is None else None,
            device=device,
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=force_pre or None,
            pretrained_text=False,
            **kwargs,
        )
    except (RuntimeError, ValueError, OSError, KeyError) as err:
        raise CxrfaError(
            f"cannot build {arch} from {weights_file or 'scratch'}: {str(err).splitlines()[0][:200]}"
        ) from None
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp_cfg = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess = image_transform_v2(pp_cfg, is_train=False)
    return OpenClipBundle(model, preprocess, _tokenizer(model_cfg, text_cfg, local_dir), weights_file, tag)
