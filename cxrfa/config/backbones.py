"""Backbones: a concrete encoder (:class:`BackboneConfig`) and the named sets a matrix's backbone names resolve
through (``real``, ``demo`` or a YAML file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrfa.config.base import _Frozen, read_yaml, validate
from cxrfa.errors import CxrfaError


class BackboneConfig(_Frozen):
    """A concrete encoder: registry entry + architecture + weights."""

    name: str  # registry entry (``cxrfa models list``); checked by cxrfa.models.registry.check_encoder_name
    arch: str  # open_clip model name (e.g. ViT-B-16, hf-hub:...) or custom CNN architecture
    pretrained: str | None = None  # open_clip tag, local checkpoint file/dir, "demo", or None (random init)
    frozen: bool = True  # frozen encoders run once per image and are cached
    standin: bool = False  # True for the small demo architectures that stand in for real weights

    @property
    def source(self) -> str:
        """Where the weights come from, as logged in the ``cxrfa.backbone.source`` tag."""
        if self.standin:
            return f"stand-in:{self.arch}"
        if self.pretrained is None:
            return "scratch"
        if Path(self.pretrained).expanduser().exists() or "/" in self.pretrained:
            return f"local:{self.pretrained}"
        return f"pretrained:{self.arch}/{self.pretrained}"


class BackboneSet(_Frozen):
    """Maps backbone names used by cells to concrete :class:`BackboneConfig` s."""

    name: str
    backbones: dict[str, BackboneConfig]

    def resolve(self, ref: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
        if ref is None or isinstance(ref, Mapping):
            return None if ref is None else dict(ref)
        if ref not in self.backbones:
            raise CxrfaError(
                f"backbone {ref!r} is not in backbone set {self.name!r}; known: {', '.join(self.backbones)}"
            )
        return self.backbones[ref].model_dump()


REAL_BACKBONES = BackboneSet(
    name="real",
    backbones={
        "clip": BackboneConfig(name="clip", arch="ViT-B-16", pretrained="openai"),
        "biomedclip": BackboneConfig(
            name="biomedclip", arch="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
        ),
        "custom": BackboneConfig(name="custom", arch="cxrfa-resnet18", frozen=False),
    },
)

DEMO_BACKBONES = BackboneSet(
    name="demo",
    backbones={
        "clip": BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained="demo", standin=True),
        "biomedclip": BackboneConfig(
            name="biomedclip", arch="cxrfa-tiny-biomedclip", pretrained="demo", standin=True
        ),
        "custom": BackboneConfig(name="custom", arch="cxrfa-cnn-small", frozen=False),
    },
)


def read_backbones(spec: str) -> BackboneSet:
    """``real``, ``demo``, or a YAML file mapping backbone names to BackboneConfig fields.

    The encoder names are not checked here (the registry is in the model layer, above this one): read a set
    through :func:`cxrfa.models.registry.load_backbones`, which checks them.
    """
    if spec == "real":
        return REAL_BACKBONES
    if spec == "demo":
        return DEMO_BACKBONES
    path = Path(spec)
    if not path.is_file():
        raise CxrfaError(f"--backbones {spec!r}: expected 'real', 'demo' or a YAML file that exists")
    raw = read_yaml(path) or {}
    return validate(BackboneSet, {"name": path.stem, "backbones": raw}, str(path))
