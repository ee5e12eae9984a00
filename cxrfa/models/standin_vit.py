"""The image tower of the ``cxrfa-tiny-biomedclip`` stand-in, a timm model (registered with timm by
:func:`cxrfa.models.weights.register_model_configs`, which names it in this module's ``__all__``)."""

from __future__ import annotations

from typing import Any

import torch


def cxrfa_tiny_vit(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """timm's ``test_vit`` (width 64, depth 6, patch 16) built for the stand-ins' 64 px, with timm's width-scaled
    ("jax": Xavier) init; the image tower of ``cxrfa-tiny-biomedclip``, a timm ViT like BiomedCLIP's.

    Named as is, ``test_vit`` was built for its default 160 px (open_clip does not pass the config's
    ``image_size`` to timm) and resampled its 10x10 position grid to 4x4 on every forward; and timm's default
    init (std 0.02, sized for width 768) starts a width-64 tower close to the identity and slows its first
    epochs (benchmarks/README.md, "Stand-in pretraining").
    """
    from timm.models.vision_transformer import test_vit

    return test_vit(pretrained, img_size=64, weight_init="jax", **kwargs)
