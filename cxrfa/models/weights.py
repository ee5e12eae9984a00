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
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrfa.errors import CxrfaError
from cxrfa.safeload import unsafe

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
_SAFE_ALTERNATIVES = {"open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
_registered = False


def register_model_configs() -> None:
    """Make the packaged demo architectures (``cxrfa-tiny-*``) known to open_clip, and the biomedclip stand-in's
    image tower (:func:`cxrfa.models.standin_vit.cxrfa_tiny_vit`) to timm (idempotent)."""
    global _registered
    if not _registered:
        import open_clip
        from timm.models import is_model, register_model

        from cxrfa.models.standin_vit import cxrfa_tiny_vit

        if not is_model("cxrfa_tiny_vit"):  # timm also lists it in this module's __all__
            register_model(cxrfa_tiny_vit)
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


@dataclass
class _Resolved:
    """Where an open_clip model's config and weights come from, all local (nothing built yet)."""

    arch: str  # the name open_clip is given
    model_cfg: dict[str, Any]
    local_dir: Path | None  # a model folder (hf-hub snapshot or local-dir), which carries its own weights
    weights_file: Path | None
    force_pre: dict[str, Any]
    quick_gelu: bool
    tag: str


def _resolve(arch: str, pretrained: str | None) -> _Resolved:
    """Every file :func:`create_open_clip` needs, found locally (downloaded only when online)."""
    from open_clip.factory import get_model_config, parse_model_name

    register_model_configs()
    if pretrained and Path(pretrained).expanduser().is_dir():
        arch, pretrained = f"local-dir:{Path(pretrained).expanduser().resolve()}", None
    schema, ident = parse_model_name(arch)
    local_dir: Path | None = None
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
        pre = raw.get("preprocess_cfg", {})
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(local_dir)
        if found is None:
            raise CxrfaError(
                f"{local_dir}: no weights file (open_clip_pytorch_model.bin / *.safetensors / *.pth)"
            )
        return _Resolved(
            f"local-dir:{local_dir}",
            raw.get("model_cfg", raw),
            local_dir,
            Path(found),
            {k: v for k, v in pre.items() if k != "size"},
            False,
            tag,
        )
    model_cfg = get_model_config(arch)
    if model_cfg is None:
        raise CxrfaError(
            f"unknown open_clip architecture {arch!r}; see open_clip.list_models() or `cxrfa models list`"
        )
    resolved = _Resolved(arch, model_cfg, None, None, {}, False, "scratch")
    if not pretrained:
        return resolved
    path = Path(pretrained).expanduser()
    if path.is_file():
        resolved.weights_file, resolved.tag = path.resolve(), f"file:{path.name}"
    elif pretrained == "demo":
        raise CxrfaError(
            f"{arch}: pretrained='demo' is unresolved; pretrain the stand-in first "
            "(cxrfa.standins.ensure_standin, or `cxrfa pretrain --data MANIFEST --arch "
            f"{arch} --out FILE` and set pretrained to FILE)"
        )
    elif "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise CxrfaError(f"weights file {pretrained} does not exist; give an existing checkpoint path")
    else:
        resolved.weights_file, tag_cfg = _resolve_tag(arch, pretrained)
        resolved.force_pre = {
            k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
        }
        resolved.quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        resolved.tag = f"tag:{pretrained}"
    return resolved


def check_open_clip(arch: str, pretrained: str | None) -> None:
    """Fail now, in one line, if :func:`create_open_clip` would miss a file: weights, model config, the
    Hugging Face text tower's config and tokenizer. Builds nothing (a check before any run starts).

    Raises:
        CxrfaError: what is missing and how to provide it.
    """
    found = _resolve(arch, pretrained)
    _require_transformers(found.model_cfg, arch)
    text_cfg = _text_override(found.model_cfg, found.local_dir)
    name = (text_cfg or {}).get("hf_model_name")
    if name and not Path(name).is_dir():
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name, local_files_only=offline())
        except OSError as err:
            raise _missing(
                f"text tower config {name!r} ({str(err).splitlines()[0][:120]})",
                f"run `huggingface-cli download {name}` on a connected machine and copy the cache here",
            ) from None
    _tokenizer(found.model_cfg, text_cfg, found.local_dir)


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
        CxrfaError: unknown architecture, weights/tokenizer files missing (one line, says how to fix), or a
            weights file that is not tensors only (never unpickled).
    """
    import open_clip

    found = _resolve(arch, pretrained)
    _require_transformers(found.model_cfg, arch)
    text_cfg = _text_override(found.model_cfg, found.local_dir)
    kwargs: dict[str, Any] = {"text_cfg": text_cfg} if text_cfg is not None else {}
    weights = found.weights_file
    try:
        model = open_clip.create_model(
            found.arch,
            pretrained=str(weights) if weights is not None and found.local_dir is None else None,
            device=device,
            force_quick_gelu=found.quick_gelu,
            force_preprocess_cfg=found.force_pre or None,
            pretrained_text=False,
            **kwargs,
        )
    except pickle.UnpicklingError as err:  # open_clip loads with weights_only=True: a crafted file stops here
        raise unsafe(str(weights), err) from None
    except (RuntimeError, ValueError, OSError, KeyError, EOFError) as err:
        raise CxrfaError(
            f"cannot build {arch} from {weights or 'scratch'}: {str(err).splitlines()[0][:200]}"
        ) from None
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp_cfg = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess = image_transform_v2(pp_cfg, is_train=False)
    tokenizer = _tokenizer(found.model_cfg, text_cfg, found.local_dir)
    return OpenClipBundle(model, preprocess, tokenizer, weights, found.tag)
