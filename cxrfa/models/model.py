"""The composed model: an :class:`Encoder` feeding the :class:`AlignmentModel` heads."""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
        """Images (B, 3, H, W) and optional report embeddings (B, De_t) -> the heads' output dict (see
        :meth:`AlignmentModel.forward`)."""
        tokens, emb = self.encode(images)
        return self.heads(tokens, emb, report_emb)

    def forward_features(
        self, tokens: Tensor, embedding: Tensor, report_emb: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Heads on precomputed (e.g. cached) encoder outputs: tokens (B, N, Dv), embedding (B, De)."""
        return self.heads(tokens, embedding, report_emb)

    def encode_reports(self, reports: Sequence[str | None]) -> Tensor:
        """(T, De_t) frozen text embeddings of report texts (NaN rows where a report is missing), cached."""
        if self.text_encoder is None:
            raise ValueError("this model has no text branch")
        return self.text_encoder.text_embeddings(reports)


def num_tokens(encoder: Encoder) -> int:
    """N, the visual tokens the encoder emits per image (one forward pass of a blank image)."""
    size = encoder.image_size
    with torch.no_grad():
        tokens, _ = encoder.encode_image(torch.zeros(1, 3, size, size, device=encoder.device))
    return int(tokens.shape[1])


def build_model(
    cfg: ModelConfig,
    labels: list[str],
    device: str | torch.device = "cpu",
    prior: Sequence[float] | None = None,
    *,
    report: bool = False,
    seed: int = 0,
) -> CXRModel:
    """Build encoder(s) and heads for a model config.

    The label text embeddings come from ``cfg.text`` (the visual encoder itself when both name the same
    backbone), computed once and cached on disk.

    Args:
        cfg: the model config.
        labels: the C label names.
        device: where the model lives.
        prior: optional (C,) train prevalence; each classifier's bias starts at its logit, so training starts
            from calibrated probabilities instead of 0.5 for findings seen in 1 % of images.
        report: the report loss term is on (builds the image embedding it contrasts with the reports).
        seed: the run's seed, which fixes the label-text derangement of a ``text_order: shuffled`` cell.

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
        label_text = text_encoder.label_embeddings(list(labels), prompts=cfg.prompts)  # (C, De_t)
    heads = AlignmentModel(
        cfg, encoder.image_dim, num_tokens(encoder), label_text, len(labels), report=report, text_seed=seed
    )
    if prior is not None:
        heads.init_prior(torch.as_tensor(prior, dtype=torch.float32))
    return CXRModel(encoder, heads.to(device), text_encoder)


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """``model/params_trainable`` (what the optimiser updates) and ``model/params_total`` (frozen encoder
    included; buffers such as the label text and the frozen text map are not parameters)."""
    params = list(model.parameters())
    return {
        "model/params_trainable": float(sum(p.numel() for p in params if p.requires_grad)),
        "model/params_total": float(sum(p.numel() for p in params)),
    }
