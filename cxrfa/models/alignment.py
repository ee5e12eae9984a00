"""The alignment heads (DESIGN.md "The model family"): transformer1, classifier A, the text branch
(projection, transformer2, orthogonal module), the label-query aligner and classifier B.

Every component is switched by :class:`cxrfa.config.ModelConfig`; the encoder is not part of this module, so the
same heads run on live encoder outputs or on cached frozen features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cxrfa.config import ModelConfig


def _encoder_stack(width: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width, heads, dim_feedforward=2 * width, dropout=dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class AlignmentModel(nn.Module):
    """Heads on top of visual tokens, optionally aligned with label text embeddings.

    Args:
        cfg: the model config (width d, layer counts, switches, output choice, initial tau).
        image_dim: Dv, width of the visual tokens.
        label_text: (C, De_t) frozen label text embeddings (None for a visual-only cell).
        num_labels: C.
    """

    def __init__(self, cfg: ModelConfig, image_dim: int, label_text: Tensor | None, num_labels: int) -> None:
        super().__init__()
        d = cfg.width
        self.cfg = cfg
        self.num_labels = num_labels
        # transformer1: Dv -> d, then L1 encoder layers over the N visual tokens
        self.t1_proj = nn.Linear(image_dim, d)
        self.t1 = _encoder_stack(d, cfg.heads, cfg.t1_layers, cfg.dropout) if cfg.t1_layers > 0 else None
        self.t1_norm = nn.LayerNorm(d)
        # classifier A on pooled V'
        self.head_a = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, num_labels))
        self.has_text = label_text is not None
        if label_text is not None:
            if label_text.shape[0] != num_labels:
                raise ValueError(f"label_text has {label_text.shape[0]} rows for {num_labels} labels")
            self.register_buffer("label_text", label_text.detach().float().clone())  # (C, De_t), frozen
            self.text_proj = nn.Linear(label_text.shape[1], d)
            self.t2 = _encoder_stack(d, cfg.heads, cfg.t2_layers, cfg.dropout) if cfg.t2_layers > 0 else None
            self.orth = nn.Linear(d, d, bias=False) if cfg.orthogonal else None
            if self.orth is not None:
                nn.init.eye_(self.orth.weight)  # start as the identity map
        self.aligner: nn.TransformerDecoder | None = None
        if cfg.aligner:
            layer = nn.TransformerDecoderLayer(
                d, cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout, batch_first=True, norm_first=True
            )
            self.aligner = nn.TransformerDecoder(layer, cfg.aligner_layers)
            self.aligner_norm = nn.LayerNorm(d)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.tau)))  # learned log(1/tau)
            self.bias_b = nn.Parameter(torch.zeros(num_labels))

    def label_stages(self) -> dict[str, Tensor]:
        """The label embeddings after each stage of the text branch, in order.

        ``raw`` (C, De_t) from the text encoder, ``projected`` (C, d), ``t2`` after transformer2 and ``orth`` after
        the orthogonal module when enabled, and ``final`` = L (C, d), the last of them.
        """
        stages = {"raw": self.label_text}
        lab = self.text_proj(self.label_text)  # (C, d)
        stages["projected"] = lab
        if self.t2 is not None:
            lab = self.t2(lab.unsqueeze(0)).squeeze(0)  # labels attend to each other: (C, d)
            stages["t2"] = lab
        if self.orth is not None:
            lab = self.orth(lab)  # (C, d)
            stages["orth"] = lab
        stages["final"] = lab
        return stages

    def label_embeddings(self) -> Tensor:
        """L (C, d): projected label text, through transformer2 and the orthogonal map when enabled."""
        return self.label_stages()["final"]

    def project_text(self, text_emb: Tensor) -> Tensor:
        """(T, De_t) joint-space text embeddings (e.g. reports) -> (T, d) in the heads' space."""
        return self.text_proj(text_emb.float())

    def forward(
        self, tokens: Tensor, embedding: Tensor, report_emb: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Heads on encoder outputs.

        Args:
            tokens: (B, N, Dv) visual tokens.
            embedding: (B, De) the encoder's pooled embedding (unused by the heads; kept for the contract).
            report_emb: optional (B, De_t) report text embeddings, projected into ``report_emb`` (B, d).

        Returns:
            ``logits`` (B, C) per cfg.output, ``logits_a`` (B, C), ``pooled`` (B, d); with a text branch
            ``labels_emb`` (C, d) normalised; with the aligner ``logits_b`` (B, C) and ``features`` (B, C, d).
        """
        v = self.t1_proj(tokens.float())  # (B, N, d)
        if self.t1 is not None:
            v = self.t1(v)  # (B, N, d)
        v = self.t1_norm(v)  # V' (B, N, d)
        pooled = v.mean(1)  # (B, d)
        out: dict[str, Tensor] = {"pooled": pooled, "logits_a": self.head_a(pooled)}  # logits_a (B, C)
        if self.has_text:
            lab = self.label_embeddings()  # (C, d)
            lab_hat = F.normalize(lab, dim=-1)  # L̂ (C, d)
            out["labels_emb"] = lab_hat
            if report_emb is not None:
                out["report_emb"] = self.project_text(report_emb)  # (B, d)
            if self.aligner is not None:
                queries = lab.unsqueeze(0).expand(v.shape[0], -1, -1)  # (B, C, d)
                feats = self.aligner_norm(self.aligner(queries, v))  # F (B, C, d): labels attend to V'
                cos = (F.normalize(feats, dim=-1) * lab_hat.unsqueeze(0)).sum(-1)  # (B, C)
                scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
                out["features"] = feats
                out["logits_b"] = cos * scale + self.bias_b  # (B, C)
        if self.cfg.output == "a":
            out["logits"] = out["logits_a"]
        elif self.cfg.output == "b":
            out["logits"] = out["logits_b"]
        else:
            out["logits"] = 0.5 * (out["logits_a"] + out["logits_b"])
        return out
