"""Visual/text encoders behind one contract (:class:`Encoder`) and the built-in registry entries.

- ``clip``: any open_clip architecture with a tag, a checkpoint file or a model folder (tokens: the ViT's
  patch tokens before projection).
- ``biomedclip``: BiomedCLIP (timm ViT + HF BERT) through open_clip, from the HF cache or a local folder
  (tokens: the timm trunk's ``forward_features`` patch tokens).
- ``custom``: a CNN trained from scratch (``cxrfa-resnet18``, ``cxrfa-cnn-small``); tokens = feature-map cells.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cxrfa.config import BackboneConfig
from cxrfa.errors import CxrfaError
from cxrfa.io import file_sha256
from cxrfa.labels import prompts_for
from cxrfa.models.registry import register_encoder
from cxrfa.models.weights import OpenClipBundle, create_open_clip
from cxrfa.prompts import DEFAULT, PromptSet, load_prompt_set
from cxrfa.safeload import load_state

log = logging.getLogger(__name__)

__all__ = ["CustomCNNEncoder", "Encoder", "OpenClipEncoder", "state_hash", "weights_hash"]

_HASHES: dict[tuple[str, int, int], str] = {}


def weights_hash(path: Path) -> str:
    """SHA-256 of a weights file. Big checkpoints (>= 64 MiB) are memoised per (path, size, mtime) so a
    ViT-B is hashed once per process; small files are always re-hashed (mtime can be too coarse)."""
    stat = path.stat()
    if stat.st_size < 64 << 20:
        return file_sha256(path)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (identifies randomly initialised weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Encoder(nn.Module, abc.ABC):
    """The contract every encoder meets; the heads, cache and trainer code against it only.

    Attributes:
        identity: hash of (registry name, arch, weights content hash or tag, preprocessing) — the cache key.
        source: where the weights come from (``BackboneConfig.source``).
        image_dim: Dv, the width of the visual tokens.
        embed_dim: De, the joint image-text embedding width (= Dv for a custom CNN).
        has_text: whether :meth:`encode_text` works.
        preprocess: PIL image -> (3, H, W) tensor (eval transform).
        image_size: H = W of the preprocessed image.
        frozen: whether the encoder is frozen (then its outputs may be cached).
    """

    identity: str
    source: str
    image_dim: int
    embed_dim: int
    has_text: bool
    preprocess: Callable[[Any], Tensor]
    image_size: int
    frozen: bool

    def _set_identity(self, cfg: BackboneConfig, weights: str) -> None:
        blob = json.dumps([cfg.name, cfg.arch, weights, repr(self.preprocess)], sort_keys=True)
        self.identity = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.source = cfg.source
        self.frozen = cfg.frozen

    @property
    def preprocess_id(self) -> str:
        """Short hash of the eval transform (part of every cache key)."""
        return hashlib.sha256(repr(self.preprocess).encode()).hexdigest()[:12]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abc.abstractmethod
    def encode_image(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> tokens (B, N, Dv), embedding (B, De) (unnormalised)."""

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> (T, De) joint-space embeddings (unnormalised)."""
        raise CxrfaError(
            f"encoder {type(self).__name__} has no text tower; set model.text to a clip/biomedclip backbone"
        )

    def label_embeddings(
        self, labels: list[str], negative: bool = False, prompts: str | PromptSet = DEFAULT
    ) -> Tensor:
        """(C, De): per label, its prompts encoded, L2-normalised, averaged and renormalised.

        ``negative`` uses the negated prompts ("no evidence of ...") instead, for zero-shot; ``prompts`` is the
        prompt set (:mod:`cxrfa.prompts`, ``model.prompts``). Computed once per (encoder identity, labels,
        prompt set content hash) and cached on disk next to the feature cache.
        """
        from cxrfa.models.cache import cached_tensor

        chosen = load_prompt_set(prompts)
        prompts_per_label = [prompts_for(label, negative=negative, prompts=chosen) for label in labels]
        key = json.dumps([self.identity, labels, chosen.content_hash, prompts_per_label])

        def compute() -> Tensor:
            with torch.inference_mode():
                rows = []
                for texts in prompts_per_label:
                    emb = nn.functional.normalize(self.encode_text(texts).float(), dim=-1)  # (P, De)
                    rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
                return torch.stack(rows).cpu()  # (C, De)

        return cached_tensor("labels", key, compute).to(self.device)

    def text_embeddings(self, texts: Sequence[str | None], batch_size: int = 256) -> Tensor:
        """(T, De) L2-normalised embeddings of free texts (e.g. reports), NaN rows for missing ones (None/"").

        Each distinct text is encoded once per encoder; the set is cached on disk like the label embeddings.
        """
        from cxrfa.models.cache import cached_tensor

        clean = [t.strip() if isinstance(t, str) else "" for t in texts]
        unique = sorted({t for t in clean if t})
        dim = self.embed_dim
        if not unique:
            return torch.full((len(clean), dim), float("nan"))

        def compute() -> Tensor:
            rows = []
            with torch.inference_mode():
                for start in range(0, len(unique), batch_size):
                    emb = self.encode_text(unique[start : start + batch_size]).float()
                    rows.append(nn.functional.normalize(emb, dim=-1).cpu())
            return torch.cat(rows)  # (U, De)

        table = cached_tensor("texts", json.dumps([self.identity, unique]), compute)
        index = {t: i for i, t in enumerate(unique)}
        out = torch.full((len(clean), table.shape[1]), float("nan"))
        rows = [i for i, t in enumerate(clean) if t]
        out[rows] = table[[index[clean[i]] for i in rows]]
        return out


# ----------------------------------------------------------------------------------------------------------
# open_clip towers


class OpenClipEncoder(Encoder):
    """An open_clip model (native ViT or timm trunk) with patch tokens exposed."""

    def __init__(self, cfg: BackboneConfig, bundle: OpenClipBundle, device: torch.device) -> None:
        super().__init__()
        self.model = bundle.model.to(device)
        self.tokenizer = bundle.tokenizer
        self.preprocess = bundle.preprocess
        visual = self.model.visual
        self.is_timm = hasattr(visual, "trunk")
        if self.is_timm:
            self.image_dim = int(visual.trunk.num_features)
        else:
            visual.output_tokens = True
            self.image_dim = int(visual.transformer.width)
        size = visual.preprocess_cfg["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        with torch.no_grad():  # De from a real forward: towers disagree on where they store it
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
            self.embed_dim = int(self.encode_image(probe)[1].shape[-1])
        self.has_text = True
        weights = (
            weights_hash(bundle.weights_file) if bundle.weights_file else "random:" + state_hash(self.model)
        )
        self._set_identity(cfg, weights)

    def encode_image(self, x: Tensor) -> tuple[Tensor, Tensor]:
        visual = self.model.visual
        if self.is_timm:
            feats = visual.trunk.forward_features(x)  # (B, P+N, Dv) with P prefix (cls) tokens
            tokens = feats[:, getattr(visual.trunk, "num_prefix_tokens", 1) :]  # (B, N, Dv)
            emb = visual.head(visual.trunk.forward_head(feats))  # (B, De)
            return tokens, emb
        emb, tokens = visual(x)  # (B, De), (B, N, Dv)
        return tokens, emb

    def encode_text(self, texts: list[str]) -> Tensor:
        ids = self.tokenizer(texts).to(self.device)  # (T, L)
        return self.model.encode_text(ids)  # (T, De)


def _open_clip_encoder(cfg: BackboneConfig, device: torch.device) -> Encoder:
    bundle = create_open_clip(cfg.arch, cfg.pretrained, device)
    log.info("built %s %s (%s)", cfg.name, cfg.arch, bundle.weights_tag)
    return OpenClipEncoder(cfg, bundle, device)


@register_encoder("clip", archs=("ViT-B-16", "ViT-B-32", "RN50", "cxrfa-tiny-clip"))
def build_clip(cfg: BackboneConfig, device: torch.device) -> Encoder:
    """An open_clip CLIP (any architecture; tag, checkpoint file or model folder); tokens before projection."""
    return _open_clip_encoder(cfg, device)


@register_encoder(
    "biomedclip",
    archs=("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "cxrfa-tiny-biomedclip"),
)
def build_biomedclip(cfg: BackboneConfig, device: torch.device) -> Encoder:
    """BiomedCLIP (timm ViT + PubMedBERT) via open_clip from the HF cache or a local folder; needs transformers."""
    return _open_clip_encoder(cfg, device)


# ----------------------------------------------------------------------------------------------------------
# custom CNNs trained from scratch


class _Block(nn.Module):
    """A basic residual block (two 3x3 convs) with an optional strided projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def _cnn_small() -> tuple[nn.Module, int]:
    """Strided stem + max-pool, then 3 residual stages: (B, 3, 64, 64) -> (B, 128, 8, 8).

    Downsampling by 4 before the first block keeps it fast on a CPU (about 25M multiply-adds per image).
    """
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # /4
        _Block(32, 32, 1),
        _Block(32, 64, 2),
        _Block(64, 128, 1),  # /8
    )
    return net, 128


def _resnet18() -> tuple[nn.Module, int]:
    """torchvision ResNet-18 (random init) without pooling/fc: (B, 3, 224, 224) -> (B, 512, 7, 7)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    return nn.Sequential(*list(net.children())[:-2]), 512


CUSTOM_ARCHS: dict[str, tuple[Callable[[], tuple[nn.Module, int]], int]] = {
    "cxrfa-cnn-small": (_cnn_small, 64),
    "cxrfa-resnet18": (_resnet18, 224),
}


class CustomCNNEncoder(Encoder):
    """A CNN whose feature-map cells are the tokens; the mean-pooled map is the embedding (De = Dv)."""

    def __init__(self, cfg: BackboneConfig, device: torch.device) -> None:
        super().__init__()
        from torchvision import transforms as T

        from cxrfa.data.augment import GrayPreprocess
        from cxrfa.data.dataset import PerImageStandardize

        if cfg.arch not in CUSTOM_ARCHS:
            raise CxrfaError(f"unknown custom CNN {cfg.arch!r}; known: {', '.join(CUSTOM_ARCHS)}")
        factory, size = CUSTOM_ARCHS[cfg.arch]
        self.net, self.image_dim = factory()
        self.embed_dim, self.image_size, self.has_text = self.image_dim, size, False
        self.preprocess = T.Compose(
            [
                T.Grayscale(num_output_channels=3),
                T.Resize((size, size)),
                T.ToTensor(),
                PerImageStandardize(),  # not a fixed mean/std: radiographs' exposure varies by site and set
            ]
        )
        # the same, split for a split held in memory and transformed a batch at a time (data/augment.py)
        self.batch_preprocess = GrayPreprocess(size)
        weights = self._load(cfg)
        # channels-last convolutions: forward + backward of a batch of 64 at 64 px on one CPU thread 157-160 ms
        # -> 119-128 ms (benchmarks/README.md, "A custom-CNN cell")
        self.net.to(device, memory_format=torch.channels_last)
        self._set_identity(cfg, weights)

    def _load(self, cfg: BackboneConfig) -> str:
        if cfg.pretrained is None:
            return "random:" + state_hash(self.net)
        path = Path(cfg.pretrained).expanduser()
        if not path.is_file():
            raise CxrfaError(
                f"custom CNN weights {cfg.pretrained} not found; give a state_dict file or pretrained=null"
            )
        state = load_state(path, fix="give a state_dict file saved with torch.save")
        state = {k.removeprefix("net."): v for k, v in state.items()}
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise CxrfaError(
                f"{path}: not a {cfg.arch} state_dict ({str(err).splitlines()[0][:160]})"
            ) from None
        return weights_hash(path)

    def encode_image(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.net(x.contiguous(memory_format=torch.channels_last))  # (B, Dv, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, h*w, Dv)
        return tokens, tokens.mean(1)  # (B, N, Dv), (B, Dv)


@register_encoder("custom", archs=tuple(CUSTOM_ARCHS), has_text=False)
def build_custom(cfg: BackboneConfig, device: torch.device) -> Encoder:
    """A CNN trained from scratch end to end (no text tower); grayscale -> 3 channels, resize, per-image
    standardisation."""
    return CustomCNNEncoder(cfg, device)
