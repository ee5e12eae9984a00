"""Typed, frozen configuration: every run is fully described by one :class:`RunConfig` (its data, model, loss
and training sections), identified by its stable :meth:`RunConfig.config_hash`.

All models are pydantic v2, frozen and ``extra="forbid"`` so a typo in a key fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cxrfa.config.backbones import BackboneConfig
from cxrfa.config.base import _Frozen
from cxrfa.config.trees import flatten

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
MAX_SEED = 2**32 - 1


class ExternalSet(_Frozen):
    """A further test set a run is evaluated on (external validation, e.g. train on NIH, test on CheXpert).

    Its labels are mapped onto the run's through the label sets' synonyms (:func:`cxrfa.labels.harmonise`);
    metrics cover the labels both share and are logged as ``external/<name>/...``.
    """

    path: str  # manifest CSV (``cxrfa data index``)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # default: the file's stem
    split: Literal["train", "val", "test", "all"] = "test"  # rows of the manifest evaluated

    @property
    def key(self) -> str:
        """The name in metric keys and tags."""
        return self.name or Path(self.path).stem


class DataConfig(_Frozen):
    """Which images and labels a run sees."""

    manifest: str | None = None  # manifest CSV path; None = the built-in synthetic demo dataset
    label_set: str = "nih14"  # label set the manifest is harmonised to (see cxrfa.labels)
    demo_n: int = Field(2000, ge=20)  # demo: number of synthetic images
    demo_size: int = Field(96, ge=32)  # demo: image side in pixels
    demo_seed: int = 0  # demo: generator seed (the dataset, not the run)
    augment: bool = True  # light train-time augmentation (only for trainable encoders)
    # keep a source split that puts a patient in two splits (warned); off: such patients are re-split by
    # patient. Left out of the config (and its hash) while off, so existing runs keep their hashes
    keep_source_split: bool = Field(False, exclude_if=lambda keep: not keep)
    # further test sets (external validation); like every field added after runs existed, left out of the
    # config (and its hash) while at its default, so finished runs keep their hashes and are not re-run
    external: list[ExternalSet] = Field(default_factory=list, exclude_if=lambda sets: not sets)

    @model_validator(mode="after")
    def _distinct_external(self) -> DataConfig:
        keys = [e.key for e in self.external]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"data.external: name {twice[0]!r} is used twice; give each set its own name")
        return self


class ModelConfig(_Frozen):
    """The alignment model (DESIGN.md "The model family"); each switch is one ablation axis."""

    visual: BackboneConfig
    text: BackboneConfig | None = None  # None = visual-only cell
    width: int = Field(128, ge=8)  # d: width of transformer1/2 and the aligner
    heads: int = Field(4, ge=1)
    t1_layers: int = Field(1, ge=0)  # transformer1 over visual tokens
    t2_layers: int = Field(0, ge=0)  # transformer2 over label embeddings (0 = off)
    orthogonal: bool = False  # orthogonal module on label embeddings
    aligner: bool = False  # label-query cross-attention aligner + classifier B
    # label prototypes: the label text through the text branch, or free learned embeddings (the capacity
    # control: the same heads without any text)
    queries: Literal["text", "learned"] = "text"
    # how the centred label text becomes the (C, d) prototypes. A free linear map of C centred texts reaches
    # any C prototypes that sum to zero, the function class of learned queries, and training rewrites it
    # (50-53 degrees of rotation in 20 AdamW steps): such a cell cannot tell text from capacity. `fixed` is a
    # frozen PCA map of the centred text (its geometry exactly, up to rotation and scale), so text cells keep
    # their text by construction; `adapter` adds a trainable rank-`text_rank` residual to it; `free` is the
    # old trainable projection.
    text_proj: Literal["fixed", "adapter", "free"] = "fixed"
    text_rank: int = Field(4, ge=1)  # rank of the residual adapter (text_proj: adapter)
    # `shuffled`: label c gets the prompt of label perm[c], a derangement fixed by the run's seed (no label
    # keeps its own text); the text control at equal capacity, identical to `kept` in everything else
    text_order: Literal["kept", "shuffled"] = "kept"
    aligner_layers: int = Field(1, ge=1)
    output: Literal["a", "b", "mean"] = "a"  # which logits are the prediction
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    tau: float = Field(0.07, gt=0.0)  # initial temperature of classifier B (learned)
    # prompt set for the label text: a name in cxrfa/prompts/ or a YAML path (left out of the hash at "default")
    prompts: str = Field("default", exclude_if=lambda name: name == "default")

    @model_validator(mode="after")
    def _possible(self) -> ModelConfig:
        if self.queries == "learned" and self.text is not None:
            raise ValueError("model.queries=learned uses no text; remove model.text (or use queries: text)")
        if self.text_order == "shuffled" and self.text is None:
            raise ValueError(
                "model.text_order=shuffled permutes the label text; set model.text (or use kept)"
            )
        needs_labels = {
            "t2_layers": self.t2_layers > 0,
            "orthogonal": self.orthogonal,
            "aligner": self.aligner,
        }
        for key, used in needs_labels.items():
            if used and self.text is None and self.queries == "text":
                raise ValueError(
                    f"model.{key} needs label prototypes (set model.text, or model.queries: learned)"
                )
        if self.output != "a" and not self.aligner:
            raise ValueError(f"model.output={self.output!r} needs model.aligner=true (classifier B)")
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be divisible by model.heads={self.heads}")
        return self


def _term_weight() -> Any:
    """A loss-term weight: the field's name is the term's name (the one list of terms, see LossConfig)."""
    return Field(0.0, ge=0.0, json_schema_extra={"loss_term": True})


class LossConfig(_Frozen):
    """Loss terms and their weights. Terms are computed unweighted; weights are applied in one place.

    The weight fields are the list of loss terms: :meth:`term_names` reads them, :mod:`cxrfa.losses` computes
    a term of each name, and a weight of 0 switches its term off.
    """

    cls: Literal["bce", "asl", "focal"] = "bce"  # classification loss on the output logits
    semantic: float = _term_weight()  # per-label contrast of images with vs without the label
    report: float = _term_weight()  # image-report CLIP loss (manifests with reports)
    domain: float = _term_weight()  # class-balanced modality gap + class-centroid contrast
    orth: float = _term_weight()  # ||L L^T - I||^2 on normalised label embeddings
    consistency: float = _term_weight()  # contrastive between classifier A and B outputs
    expression: float = _term_weight()  # MSE of probabilities vs labels
    supcon: float = _term_weight()  # multi-label supervised contrastive (image branch)
    coral: float = _term_weight()  # CORAL across `domain` groups (part of domain alignment)
    domain_kind: Literal["centroid", "mmd"] = "centroid"  # gap part: class-balanced centroid gap² or MMD²
    tau: float = Field(0.1, gt=0.0)  # temperature of the contrastive terms
    focal_gamma: float = Field(2.0, ge=0.0)
    asl_gamma_neg: float = Field(4.0, ge=0.0)
    asl_gamma_pos: float = Field(0.0, ge=0.0)
    asl_clip: float = Field(0.05, ge=0.0, lt=1.0)

    @classmethod
    def term_names(cls) -> tuple[str, ...]:
        """Every loss term: ``cls`` and one per weight field, in field order."""
        extras = {name: f.json_schema_extra for name, f in cls.model_fields.items()}
        return (
            "cls",
            *(n for n, extra in extras.items() if isinstance(extra, dict) and extra.get("loss_term")),
        )

    @property
    def weights(self) -> dict[str, float]:
        """Weight per term name; ``cls`` is the fixed unit weight every other term is relative to."""
        return {"cls": 1.0, **{name: float(getattr(self, name)) for name in self.term_names()[1:]}}


class TrainConfig(_Frozen):
    """The optimisation loop."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_frac: float = Field(0.1, ge=0.0, lt=1.0)  # fraction of steps with linear warmup, then cosine
    grad_clip: float = Field(1.0, ge=0.0)  # 0 = off
    patience: int = Field(3, ge=1)  # early stopping on the monitored val metric
    monitor: Literal["val/macro_auc", "val/map"] = "val/macro_auc"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None = torch's default (all cores)
    feature_cache: bool = True  # cache frozen encoder outputs on disk
    num_workers: int = Field(0, ge=0)
    # share of train patients used (label efficiency); a nested, label-stratified subset fixed per manifest
    # (cxrfa.data.fractions), the same for every cell and seed; val and test never shrink (left out of the
    # hash at 1.0)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0, exclude_if=lambda fraction: fraction == 1.0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        # checked here, not when torch first touches it: a typo fails before any run exists
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return value


class RunConfig(_Frozen):
    """Everything one run (one ablation cell x seed) needs; its hash identifies it for resume."""

    cell: str = "default"
    seed: int = 0
    # what the cell is: a trained model, or a baseline with no head training (cxrfa.baselines): zero-shot
    # prompts, a linear probe on frozen embeddings, or logistic regression on downsampled pixels. Left out of
    # the config (and its hash) at "trained", so finished runs keep their hashes
    kind: Literal["trained", "zeroshot", "probe", "pixels"] = Field(
        "trained", exclude_if=lambda kind: kind == "trained"
    )
    axes: dict[str, str] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        # numpy and torch take 32-bit unsigned seeds; outside, they fail (or wrap) only when the run starts
        if not 0 <= value <= MAX_SEED:
            raise ValueError(
                f"seed {value} (from the matrix's seeds or --seeds/--seed) is outside 0 … {MAX_SEED}"
            )
        return value

    @model_validator(mode="after")
    def _baseline_possible(self) -> RunConfig:
        if self.kind in ("zeroshot", "probe") and not self.model.visual.frozen:
            raise ValueError(
                f"kind={self.kind!r} reads frozen embeddings; model.visual must be a frozen backbone "
                "(clip/biomedclip), not a trainable one"
            )
        return self

    def config_hash(self) -> str:
        """Stable 12-hex-digit hash of the resolved config (same config -> same hash, across processes)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """The resolved config as dotted keys (``model.visual.arch``), for MLflow params."""
        return flatten(self.model_dump(mode="json"))
