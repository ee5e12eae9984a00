"""Encoder registry (timm-style): ``register_encoder`` / ``list_encoders`` / ``build_encoder``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cxrfa.config import BackboneConfig
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
    import cxrfa.models.encoders  # noqa: F401  (registers the built-in entries)

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
