"""The alignment heads (DESIGN.md "The model family"): transformer1, classifier A, the label prototypes (text
branch: projection, transformer2, orthogonal module; or free learned queries), the label-query aligner and
classifier B.

Two choices keep the alignment honest:

- The aligner's per-label features ``F[b, c]`` are read from the image only: label queries decide *where* to
  look (attention weights), but the values are visual tokens and the query is never added back (no residual).
  So ``F[b, c]`` cannot contain the label embedding it is compared with.
- The combined output averages the two heads' *probabilities*, each head trained with its own classification
  loss, so the output stays a calibrated probability.

Every component is switched by :class:`cxrfa.config.ModelConfig`; the encoder is not part of this module, so the
same heads run on live encoder outputs or on cached frozen features.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cxrfa.config import ModelConfig
from cxrfa.errors import CxrfaError

_BASIS_ROTATION_SEED = 0  # the fixed rotation of the frozen text map: one map per label set, in every run


def _encoder_stack(width: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width, heads, dim_feedforward=2 * width, dropout=dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def mean_probability_logits(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """logit((σ(a) + σ(b)) / 2), computed in log space so it is exact for large |logits|."""
    log_p = torch.logaddexp(F.logsigmoid(logits_a), F.logsigmoid(logits_b))  # log(2p)
    log_q = torch.logaddexp(F.logsigmoid(-logits_a), F.logsigmoid(-logits_b))  # log(2(1 - p))
    return log_p - log_q


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` without a fixed point, the same for the same ``(n, seed)``.

    Label c of a ``text_order: shuffled`` cell gets the prompt of label ``perm[c]``: no label keeps its own
    text, and the assignment is a plain function of the run's seed (drawn from its own numpy stream, so it
    does not move any other random state).

    Raises:
        ValueError: ``n < 2`` (one label has no other text to take).
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 labels, got {n}")
    rng = np.random.default_rng([seed, 0x5EED])
    while True:  # rejection: about e (2.72) draws on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return [int(i) for i in perm]


def frozen_text_basis(centred: Tensor, width: int) -> Tensor:
    """The frozen map of ``text_proj: fixed``: (C, De_t) centred label text -> a (De_t, d) matrix.

    The centred text's principal axes (at most C - 1 after centring), placed in the d-dimensional space by a
    fixed random rotation so they spread over every coordinate the heads' LayerNorms see, and scaled so that the
    projected labels have mean norm sqrt(d) (per-coordinate RMS 1). The labels' Gram matrix is kept exactly, up
    to that one scale (when C - 1 <= d; otherwise the best rank-d approximation). Each axis' sign is fixed by its
    largest entry, so the same label set gives the same map in any row order.

    Raises:
        CxrfaError: every label text is the same vector (nothing to project).
    """
    x = centred.detach().double().cpu()  # (C, De_t)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)  # vh (k, De_t), k = min(C, De_t)
    rank = int((sv > sv.max() * 1e-6).sum()) if sv.numel() and sv.max() > 0 else 0
    if rank == 0:
        raise CxrfaError(
            "the label texts embed to one and the same vector: the text branch has nothing to use"
        )
    k = min(rank, width)
    axes = vh[:k].T  # (De_t, k)
    sign = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))  # (1, k)
    axes = axes * sign
    gen = torch.Generator().manual_seed(_BASIS_ROTATION_SEED)
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=torch.float64))  # (d, d)
    basis = axes @ rotation[:k]  # (De_t, d): orthonormal rows of the rotation keep the geometry
    # mean norm sqrt(d), a LayerNorm output's scale: transformer2's residual updates then leave the geometry
    # (smoke data, 3 epochs: Procrustes residual to the text 0.006 at this scale, 0.31 at norm 1)
    basis = basis * (math.sqrt(width) / (x @ basis).norm(dim=1).mean())
    return basis.to(centred.dtype)


class LabelQueryAligner(nn.Module):
    """Label queries cross-attend to the visual tokens (Query2Label-style), one feature per image and label.

    Positional embeddings are added to the keys only (DETR-style), so values carry image content. Layer ``l``
    reads ``a_l = Attn(q_l, V + pos, V)``; the feature accumulates the reads, ``x_l = x_{l-1} + a_l`` followed
    by a feed-forward block, and the next queries are ``q_{l+1} = q + x_l``. The label query itself is never
    part of ``x``.

    Args:
        width: d.
        heads: attention heads.
        layers: cross-attention layers.
        dropout: attention and feed-forward dropout.
        num_tokens: N, for the key positional embeddings.
    """

    def __init__(self, width: int, heads: int, layers: int, dropout: float, num_tokens: int) -> None:
        super().__init__()
        self.key_pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.key_pos, std=0.02)
        self.q_norm = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) for _ in range(layers)
        )
        self.ffn = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * width),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(2 * width, width),
            )
            for _ in range(layers)
        )
        self.out_norm = nn.LayerNorm(width)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        """queries (B, C, d), tokens (B, N, d) -> features F (B, C, d)."""
        keys = tokens + self.key_pos[:, : tokens.shape[1]]  # (B, N, d)
        x: Tensor | None = None
        q = queries
        for q_norm, attn, ffn in zip(self.q_norm, self.attn, self.ffn, strict=True):
            read, _ = attn(q_norm(q), keys, tokens, need_weights=False)  # (B, C, d): image values only
            x = read if x is None else x + read
            x = x + ffn(x)
            q = queries + x
        return self.out_norm(x)  # type: ignore[arg-type]


class AlignmentModel(nn.Module):
    """Heads on top of visual tokens, optionally aligned with label prototypes.

    The text branch centres the label text and maps it to width d per ``cfg.text_proj``: a frozen PCA map
    (``fixed``, :func:`frozen_text_basis`), that map plus a trainable low-rank residual (``adapter``, starting
    at zero), or a free linear map (``free``). ``cfg.text_order: shuffled`` gives label c the text of label
    ``derangement(C, text_seed)[c]``; centre and frozen map are computed before the shuffle, so the two twins
    differ in the assignment only.

    Args:
        cfg: the model config (width d, layer counts, switches, output choice, initial tau).
        image_dim: Dv, width of the visual tokens.
        num_tokens: N, visual tokens per image (for positional embeddings).
        label_text: (C, De_t) frozen label text embeddings, row c for label c (None for a visual-only or
            learned-query cell).
        num_labels: C.
        report: build the image embedding of the report contrast (only when that loss term is on).
        text_seed: seed of the derangement of a shuffled-text cell (the run's seed).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        image_dim: int,
        num_tokens: int,
        label_text: Tensor | None,
        num_labels: int,
        *,
        report: bool = False,
        text_seed: int = 0,
    ) -> None:
        super().__init__()
        d = cfg.width
        self.cfg = cfg
        self.num_labels = num_labels
        # transformer1: Dv -> d, positional embeddings, then L1 encoder layers over the N visual tokens
        self.t1_proj = nn.Linear(image_dim, d)
        self.t1_pos = nn.Parameter(torch.zeros(1, num_tokens, d))
        nn.init.trunc_normal_(self.t1_pos, std=0.02)
        self.t1 = _encoder_stack(d, cfg.heads, cfg.t1_layers, cfg.dropout) if cfg.t1_layers > 0 else None
        self.t1_norm = nn.LayerNorm(d)
        # classifier A on pooled V'
        self.head_a = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, num_labels))
        self.has_text = label_text is not None
        self.has_prototypes = self.has_text or cfg.queries == "learned"
        # text_assignment[c] = the label whose text label c gets (None: no text; identity: kept)
        self.text_assignment: list[int] | None = None
        self.text_proj: nn.Linear | None = None
        self.text_adapter: nn.Sequential | None = None
        if label_text is not None:
            if label_text.shape[0] != num_labels:
                raise ValueError(f"label_text has {label_text.shape[0]} rows for {num_labels} labels")
            text = label_text.detach().float().clone()  # (C, De_t)
            # the prompts' shared direction ("a chest x-ray showing ...") carries no label information and is
            # most of each vector (cos ~0.99 between labels for small text towers): centre, then project
            self.register_buffer("text_centre", text.mean(0))  # (De_t,)
            if cfg.text_proj == "free":
                self.text_proj = nn.Linear(text.shape[1], d, bias=False)
            else:
                self.register_buffer("text_basis", frozen_text_basis(text - text.mean(0), d))  # (De_t, d)
            if cfg.text_proj == "adapter":
                # rank-r residual on the frozen map's output; zero at the start, so it starts as `fixed`
                self.text_adapter = nn.Sequential(
                    nn.Linear(d, cfg.text_rank, bias=False), nn.Linear(cfg.text_rank, d, bias=False)
                )
                nn.init.zeros_(self.text_adapter[1].weight)
            order = derangement(num_labels, text_seed) if cfg.text_order == "shuffled" else range(num_labels)
            self.text_assignment = list(order)
            self.register_buffer("label_text", text[self.text_assignment])  # (C, De_t), frozen
        elif cfg.queries == "learned":
            self.query_emb = nn.Parameter(torch.randn(num_labels, d) / math.sqrt(d))  # (C, d), free
        self.image_proj: nn.Linear | None = None
        if self.has_prototypes:
            self.t2 = _encoder_stack(d, cfg.heads, cfg.t2_layers, cfg.dropout) if cfg.t2_layers > 0 else None
            self.orth = nn.Linear(d, d, bias=False) if cfg.orthogonal else None
            if self.orth is not None:
                nn.init.eye_(self.orth.weight)  # start as the identity map
            if report and self.has_text:
                # image-level embedding in the joint space, for the report contrast; not built without that
                # term, where it would be trained by nothing and only inflate the parameter count
                self.image_proj = nn.Linear(d, d)
        self.aligner: LabelQueryAligner | None = None
        if cfg.aligner:
            # no dropout on the path to classifier B: dropout shrinks cosine scores during training only, so the
            # thresholds learned on them over-predict at evaluation (measured: ECE 0.028 vs 0.008 on the demo)
            self.aligner = LabelQueryAligner(d, cfg.heads, cfg.aligner_layers, 0.0, num_tokens)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.tau)))  # learned log(1/tau)
            # per-label decision threshold in cosine units, like the score it is compared with: a logit-space
            # bias would have to move 1/tau times as far (and Adam moves every parameter at about lr per
            # step), so classifier B would stay miscalibrated while the alignment terms spread the scores
            self.threshold_b = nn.Parameter(torch.zeros(num_labels))

    @torch.no_grad()
    def init_prior(self, prior: Tensor) -> None:
        """Start both classifiers at the (C,) prior probabilities: bias = logit(prior)."""
        bias = torch.logit(prior.clamp(1e-4, 1 - 1e-4)).to(self.head_a[1].bias)
        self.head_a[1].bias.copy_(bias)
        if self.aligner is not None:
            self.threshold_b.copy_(-bias / self._scale())
            self.prior_b = prior.clamp(1e-4, 1 - 1e-4).to(self.threshold_b)  # for init_threshold_b

    # ---- classifier B's starting thresholds -----------------------------------------------------------------
    prior_b: Tensor | None = None

    @torch.no_grad()
    def init_threshold_b(self, scores: Tensor) -> None:
        """Start classifier B at the prior on (B, C) initial cosine scores: per label, the θ_c at which the
        mean of σ((s_bc − θ_c)/τ) over the batch is the prior given to :meth:`init_prior` (no-op without one).

        An untrained aligner's cosines are not 0 and 1/τ ≈ 14 multiplies them, so θ_c = −τ·logit(prior) alone
        started the head far from the prior (0.03–18× on the tiny heads of tests/test_classifier_b_start.py;
        0.89–1.18× from 512 images' cosines). The mean is monotone in θ_c: bisection, all labels at once.
        """
        if self.prior_b is None or self.aligner is None:
            return
        scale, prior = self._scale(), self.prior_b.to(scores)  # prior_b is set before the model moves
        lo = torch.full_like(self.threshold_b, -1.0) - 20 / scale  # mean probability ~1 below, ~0 above
        hi = torch.full_like(self.threshold_b, 1.0) + 20 / scale
        for _ in range(60):
            mid = (lo + hi) / 2
            too_high = torch.sigmoid((scores - mid) * scale).mean(0) > prior  # (C,)
            lo, hi = torch.where(too_high, mid, lo), torch.where(too_high, hi, mid)
        self.threshold_b.copy_((lo + hi) / 2)

    def _scale(self) -> Tensor:
        """1/tau of classifier B, at most 100 (as CLIP's logit scale)."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def label_stages(self) -> dict[str, Tensor]:
        """The label prototypes after each stage, in order.

        ``raw`` (C, De_t) from the text encoder (or the learned queries), ``centred`` (text: minus the mean label
        text), ``projected`` (C, d), ``t2`` after transformer2 and ``orth`` after the orthogonal module when
        enabled, and ``final`` = L (C, d).
        """
        if self.has_text:
            stages = {"raw": self.label_text, "centred": self.label_text - self.text_centre}
            lab = self._project(stages["centred"])  # (C, d)
        else:
            stages = {"raw": self.query_emb}
            lab = self.query_emb
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
        """L (C, d): the label prototypes after every enabled stage."""
        return self.label_stages()["final"]

    def _project(self, centred: Tensor) -> Tensor:
        """(T, De_t) centred text -> (T, d), per ``cfg.text_proj``."""
        if self.text_proj is not None:
            return self.text_proj(centred)
        out = centred @ self.text_basis  # (T, d)
        if self.text_adapter is not None:
            out = out + self.text_adapter(out)
        return out

    def project_text(self, text_emb: Tensor) -> Tensor:
        """(T, De_t) joint-space text embeddings (e.g. reports) -> (T, d) in the heads' space, centred and
        projected like the label text."""
        return self._project(text_emb.float() - self.text_centre)

    def forward(
        self, tokens: Tensor, embedding: Tensor, report_emb: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Heads on encoder outputs.

        Args:
            tokens: (B, N, Dv) visual tokens.
            embedding: (B, De) the encoder's pooled embedding (unused by the heads; kept for the contract).
            report_emb: optional (B, De_t) report text embeddings (NaN rows = no report), projected into
                ``report_emb`` (B, d) next to ``image_emb`` (B, d).

        Returns:
            ``logits`` (B, C) per cfg.output, ``logits_a`` (B, C), ``pooled`` (B, d); with prototypes
            ``labels_emb`` (C, d) normalised; with the aligner ``logits_b`` (B, C), ``scores`` (B, C) =
            cos(F[b, c], L̂[c]) and ``features`` (B, C, d).
        """
        v = self.t1_proj(tokens.float()) + self.t1_pos[:, : tokens.shape[1]]  # (B, N, d)
        if self.t1 is not None:
            v = self.t1(v)  # (B, N, d)
        v = self.t1_norm(v)  # V' (B, N, d)
        pooled = v.mean(1)  # (B, d)
        out: dict[str, Tensor] = {"pooled": pooled, "logits_a": self.head_a(pooled)}  # logits_a (B, C)
        if self.has_prototypes:
            lab = self.label_embeddings()  # (C, d)
            lab_hat = F.normalize(lab, dim=-1)  # L̂ (C, d)
            out["labels_emb"] = lab_hat
            if self.has_text:
                out["labels_raw"] = self.label_text  # (C, De_t): the reference for the orthogonality term
            if report_emb is not None and self.image_proj is not None:
                out["image_emb"] = self.image_proj(pooled)  # (B, d)
                out["report_emb"] = self.project_text(torch.nan_to_num(report_emb))  # (B, d)
                out["has_report"] = torch.isfinite(report_emb).all(-1)  # (B,)
                out["report_same"] = (report_emb.unsqueeze(1) == report_emb.unsqueeze(0)).all(-1)  # (B, B)
            if self.aligner is not None:
                queries = lab.unsqueeze(0).expand(v.shape[0], -1, -1)  # (B, C, d)
                feats = self.aligner(queries, v)  # F (B, C, d): read from V' only
                scores = (F.normalize(feats, dim=-1) * lab_hat.unsqueeze(0)).sum(-1)  # (B, C)
                out["features"] = feats
                out["scores"] = scores
                out["logits_b"] = (scores - self.threshold_b) * self._scale()  # (B, C)
        if self.cfg.output == "a":
            out["logits"] = out["logits_a"]
        elif self.cfg.output == "b":
            out["logits"] = out["logits_b"]
        else:
            out["logits"] = mean_probability_logits(out["logits_a"], out["logits_b"])
        return out
