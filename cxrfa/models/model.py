"""The composed model: an :class:`Encoder` feeding the :class:`AlignmentModel` heads."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from cxrfa.config import ModelConfig
from cxrfa.models.alignment import AlignmentModel
from cxrfa.models.encoders import Encoder
from cxrfa.models.registry import build_encoder

log = logging.getLogger(__name__)


class CXRModel(nn.Module):
    """Encoder + heads. A frozen encoder runs without gradients and stays in eval mode.

    Args:
        encoder: the visual encoder.
        heads: the alignment heads.
        text_encoder: the frozen encoder behind the label text (for report embeddings); not a submodule, so
            it is neither trained nor saved with the model.
    """

    def __init__(self, encoder: Encoder, heads: AlignmentModel, text_encoder: Encoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self._text_encoder = [text_encoder]  # list: keep it out of the module tree

    @property
    def text_encoder(self) -> Encoder | None:
        return self._text_encoder[0]

    def train(self, mode: bool = True) -> CXRModel:
        super().train(mode)
        if self.encoder.frozen:
            self.encoder.eval()  # frozen: no dropout/batch-norm updates
        return self

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> tokens (B, N, Dv), embedding (B, De); without gradients when frozen."""
        if self.encoder.frozen:
            with torch.no_grad():
                return self.encoder.encode_image(images)
        return self.encoder.encode_image(images)

    def forward(self, images: Tensor, report_emb: Tensor | None = None) -> dict[str, Tensor]:
        """Images (B, 3, H, W) -> the heads' output dict (see :meth:`AlignmentModel.forward`)."""
        tokens, emb = self.encode(images)
        return self.heads(tokens, emb, report_emb)

    def forward_features(
        self, tokens: Tensor, embedding: Tensor, report_emb: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Heads on precomputed (e.g. cached) encoder outputs: tokens (B, N, Dv), embedding (B, De)."""
        return self.heads(tokens, embedding, report_emb)

    def encode_reports(self, reports: list[str]) -> Tensor:
        """(T, De_t) frozen text embeddings of report texts (for the semantic term's report contrast)."""
        if self.text_encoder is None:
            raise ValueError("this model has no text branch")
        with torch.no_grad():
            return self.text_encoder.encode_text(reports).float()


def build_model(cfg: ModelConfig, labels: list[str], device: str | torch.device = "cpu") -> CXRModel:
    """Build encoder(s) and heads for a model config.

    The label text embeddings come from ``cfg.text`` (the visual encoder itself when both name the same
    backbone), computed once and cached on disk.

    Raises:
        CxrfaError: unknown encoder or unavailable weights.
    """
    encoder = build_encoder(cfg.visual, device)
    text_encoder: Encoder | None = None
    label_text: Tensor | None = None
    if cfg.text is not None:
        text_encoder = encoder if cfg.text == cfg.visual else build_encoder(cfg.text, device)
        if not text_encoder.frozen:
            log.info("text encoder %s is used frozen for label embeddings", cfg.text.arch)
        label_text = text_encoder.label_embeddings(list(labels))  # (C, De_t)
    heads = AlignmentModel(cfg, encoder.image_dim, label_text, len(labels)).to(device)
    return CXRModel(encoder, heads, text_encoder)
