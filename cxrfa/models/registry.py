"""Encoder registry (timm-style): ``register_encoder`` / ``list_encoders`` / ``build_encoder``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cxrfa.config import BackboneConfig, BackboneSet, read_backbones
from cxrfa.errors import CxrfaError

if TYPE_CHECKING:
    from cxrfa.models.encoders import Encoder

Builder = Callable[[BackboneConfig, torch.device], "Encoder"]


@dataclass(frozen=True)
class EncoderInfo:
    """What ``cxrfa models list`` shows for one registry entry."""

    name: str  # registry name, the value of BackboneConfig.name
    description: str  # first line of the builder's docstring
    archs: tuple[str, ...]  # architectures known to work (others may, e.g. any open_clip model for clip)
    has_text: bool  # whether the entry has a text tower


_REGISTRY: dict[str, tuple[Builder, EncoderInfo]] = {}


def register_encoder(
    name: str, archs: tuple[str, ...] = (), has_text: bool = True
) -> Callable[[Builder], Builder]:
    """Decorator registering ``fn(cfg, device) -> Encoder`` under ``name``."""

    def wrap(fn: Builder) -> Builder:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = (fn, EncoderInfo(name, doc[0] if doc else "", archs, has_text))
        return fn

    return wrap


def list_encoders() -> list[EncoderInfo]:
    """Every registered encoder entry, by name."""
    # the built-in entries are registered by cxrfa.models.encoders, which the package's __init__ imports before
    # any of its modules can be used (an import of it here would close a cycle: encoders imports this module)
    return [info for _, (_, info) in sorted(_REGISTRY.items())]


def check_encoder_name(name: str, where: str = "") -> None:
    """The one check of a :attr:`BackboneConfig.name` against the registry (the names live only here).

    Args:
        name: the registry entry a backbone config names.
        where: prefix for the error (``"bb.yaml: clip.name: "``), naming the file and key.

    Raises:
        CxrfaError: unknown name; the message lists the registered ones.
    """
    known = [info.name for info in list_encoders()]
    if name not in known:
        raise CxrfaError(f"{where}unknown encoder {name!r}; known: {', '.join(known)} (cxrfa models list)")


def load_backbones(spec: str) -> BackboneSet:
    """A backbone set (``real``, ``demo`` or a YAML file, read by :func:`cxrfa.config.read_backbones`) whose
    every encoder name is registered.

    Raises:
        CxrfaError: no such set or file, a bad field, or an unknown encoder name (naming the file and the key).
    """
    bset = read_backbones(spec)
    for key, backbone in bset.backbones.items():
        check_encoder_name(backbone.name, f"{spec}: {key}.name: ")
    return bset


def build_encoder(cfg: BackboneConfig, device: str | torch.device = "cpu") -> Encoder:
    """Build the encoder a :class:`BackboneConfig` names.

    Raises:
        CxrfaError: unknown registry name (lists the known ones) or unavailable weights.
    """
    check_encoder_name(cfg.name)
    encoder = _REGISTRY[cfg.name][0](cfg, torch.device(device))
    if cfg.frozen:
        encoder.requires_grad_(False)
        encoder.eval()
    return encoder
