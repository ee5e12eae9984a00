"""Typed, frozen configuration: every run is fully described by one :class:`RunConfig`.

All models are pydantic v2, frozen and ``extra="forbid"`` so a typo in a key fails loudly. An ablation
matrix (:class:`AblationMatrix`) is a base config plus named cells written as *overrides*; :func:`expand`
resolves it, with a backbone set (:class:`BackboneSet`), into one ``RunConfig`` per cell x axis value x seed,
each with a stable :meth:`RunConfig.config_hash`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrfa.errors import CxrfaError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
MAX_SEED = 2**32 - 1


class _Frozen(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `.nan` in YAML is an error naming the key, not a run that diverges
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)


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


class ParamRange(_Frozen):
    """One dimension of a tuning search space."""

    low: float | None = None
    high: float | None = None
    log: bool = True  # sample log-uniformly
    optional: bool = False  # the term may also be switched off (value 0), sampled as a yes/no choice
    choices: list[Any] | None = None  # categorical instead of a range

    @model_validator(mode="after")
    def _complete(self) -> ParamRange:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("a search dimension needs low and high, or choices")
        if self.choices is None and not self.low < self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.choices is None and self.low <= 0:  # type: ignore[operator]
            raise ValueError("a log-uniform range needs low > 0")
        return self


class SearchSpace(_Frozen):
    """The ``tune:`` section of a matrix file: dotted config paths -> ranges."""

    metric: Literal["val/macro_auc", "val/map"] = "val/macro_auc"
    params: dict[str, ParamRange] = Field(default_factory=dict)


class AblationMatrix(_Frozen):
    """A matrix file: a base config, named cells (overrides of the base), seeds, axes and a search space.

    ``model.visual`` / ``model.text`` name a backbone (``clip``, ``biomedclip``, ``custom``) that the chosen
    :class:`BackboneSet` resolves; a full mapping is accepted too.
    """

    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    cells: dict[str, dict[str, Any]]
    seeds: list[int] = Field(default_factory=lambda: [0])
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)  # axis -> value -> overrides
    tune: SearchSpace = Field(default_factory=SearchSpace)
    # The study's questions: family -> differences "cell - other cell"; `compare` tests exactly these, Holm within
    # each family. A list, so a cell added to the matrix joins a family by adding one line.
    contrasts: dict[str, list[str]] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)  # file the matrix was read from (for messages)
    # label-efficiency protocol: every cell is crossed with these train.label_fraction values (`cell@0.1`)
    fractions: list[float] | None = None
    external: list[ExternalSet] = Field(default_factory=list)  # further test sets for every run

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, fractions: list[float] | None) -> list[float] | None:
        check_fractions(fractions)
        return fractions

    @model_validator(mode="after")
    def _known_contrast_cells(self) -> AblationMatrix:
        for family, items in self.contrasts.items():
            if not items:
                raise ValueError(f"contrasts.{family} is empty; list differences as 'cell - other-cell'")
            for item in items:
                for cell in parse_contrast(item, f"contrasts.{family}"):
                    if cell not in self.cells:
                        raise ValueError(
                            f"contrasts.{family}: {item!r} names cell {cell!r}, which is not in cells "
                            f"(cells: {', '.join(self.cells)})"
                        )
        return self

    def contrast_pairs(self) -> dict[str, list[tuple[str, str]]]:
        """Family -> (cell, other) pairs of the declared contrasts, in file order."""
        return {
            f: [parse_contrast(i, f"contrasts.{f}") for i in items] for f, items in self.contrasts.items()
        }


def check_fractions(fractions: Iterable[float] | None, prefix: str = "") -> None:
    """Label fractions must lie in (0, 1] and be distinct (raises ValueError, its message after ``prefix``)."""
    if fractions is None:
        return
    values = list(fractions)
    if not values:
        raise ValueError(f"{prefix}no fraction given; list values in (0, 1], e.g. [0.01, 0.1, 1.0]")
    for f in values:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"{prefix}{f!r} is not a fraction in (0, 1]")
    if len({fraction_name(f) for f in values}) != len(values):
        raise ValueError(f"{prefix}a fraction is listed twice")


def fraction_name(fraction: float) -> str:
    """A label fraction as cell names and tags write it: ``0.1``, ``0.01``, ``1``."""
    return f"{fraction:g}"


FRACTION_SEP = "@"  # `dual-clip@0.1`: cell `dual-clip` at train.label_fraction 0.1


def split_fraction(cell: str) -> tuple[str, float | None]:
    """``dual-clip@0.1`` -> (``dual-clip``, 0.1); a cell without a fraction -> (cell, None)."""
    base, sep, tail = cell.rpartition(FRACTION_SEP)
    if sep:
        try:
            return base, float(tail)
        except ValueError:
            pass
    return cell, None


def parse_contrast(text: str, where: str = "contrast") -> tuple[str, str]:
    """``"dual-clip - dual-learned"`` -> ``("dual-clip", "dual-learned")``.

    The separator is `` - `` (spaces around the minus), since cell names contain hyphens.

    Raises:
        ValueError: not two distinct names around one `` - ``.
    """
    parts = [p.strip() for p in str(text).split(" - ")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"{where}: {text!r} is not 'cell - other-cell' (two different cells, ' - ' between)")
    return parts[0], parts[1]


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


# ----------------------------------------------------------------------------------------------------------
# dict helpers


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` onto ``base`` (override wins); inputs are not modified."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``tree`` with ``a.b.c`` set to ``value``."""
    head, *rest = dotted.split(".")
    return deep_merge(tree, {head: value} if not rest else {head: set_dotted({}, ".".join(rest), value)})


def _describe(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def validate(model: type[_Frozen], data: Mapping[str, Any], where: str) -> Any:
    """Validate ``data`` against ``model``; a failure becomes one :class:`CxrfaError` line naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise CxrfaError(_describe(err, where)) from None


# ----------------------------------------------------------------------------------------------------------
# matrices

PACKAGED_MATRICES = Path(__file__).parent / "matrices"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML lets the last one win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content (safe types only; a duplicate key is an error).

    Raises:
        CxrfaError: unreadable, not valid YAML, or a key given twice, naming the file and line.
    """
    from cxrfa.io import require_regular

    require_regular(path, "YAML file")  # a FIFO would block forever
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as err:
        raise CxrfaError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise CxrfaError(f"{path}:{line} is not valid YAML ({getattr(err, 'problem', err)})") from None


def find_matrix(name: str, search: Iterable[Path] = (Path("ablations"),)) -> Path:
    """Resolve ``--matrix``: ``ablations/NAME.yaml``, then a path, then the matrices packaged with cxrfa."""
    for folder in search:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    if Path(name).is_file():
        return Path(name)
    if (PACKAGED_MATRICES / f"{name}.yaml").is_file():
        return PACKAGED_MATRICES / f"{name}.yaml"
    known = sorted({p.stem for f in [*search, PACKAGED_MATRICES] if f.is_dir() for p in f.glob("*.yaml")})
    raise CxrfaError(
        f"no matrix {name!r} (looked in ablations/, as a path, and packaged); known: {', '.join(known)}"
    )


def load_matrix(name_or_path: str) -> AblationMatrix:
    """Read and validate a matrix file; errors name the file and the key."""
    path = find_matrix(name_or_path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise CxrfaError(f"{path}: a matrix file must be a mapping with 'name' and 'cells'")
    matrix = validate(AblationMatrix, {**raw, "source": str(path)}, str(path))
    if not matrix.cells:
        raise CxrfaError(
            f"{path}: 'cells' is empty; a matrix needs at least one cell (e.g. 'baseline: {{}}')"
        )
    if not matrix.seeds:
        raise CxrfaError(f"{path}: 'seeds' is empty; list at least one seed, e.g. 'seeds: [0]'")
    expand(matrix, DEMO_BACKBONES)  # impossible cells fail now, naming the file
    return matrix


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


def _resolve_backbones(tree: dict[str, Any], backbones: BackboneSet) -> dict[str, Any]:
    model = dict(tree.get("model", {}))
    for key in ("visual", "text"):
        if key in model:
            model[key] = backbones.resolve(model[key])
    return {**tree, "model": model}


def expand(
    matrix: AblationMatrix,
    backbones: BackboneSet,
    seeds: list[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cells: Iterable[str] | None = None,
    fractions: Sequence[float] | None = None,
    external: Sequence[ExternalSet] = (),
) -> list[RunConfig]:
    """Resolve a matrix into run configs: cells x axis values x label fractions x seeds, in file order.

    Args:
        matrix: the validated matrix.
        backbones: resolves backbone names in ``model.visual`` / ``model.text``.
        seeds: replaces the matrix's seeds when given.
        overrides: dotted-key overrides applied to every cell last (e.g. ``{"data.manifest": "m.csv"}``).
        cells: restrict to these cell names (unknown names are an error).
        fractions: replaces the matrix's ``fractions`` when given: each cell runs at each
            ``train.label_fraction``, named ``<cell>@<fraction>`` with the axis tag ``fraction``.
        external: test sets evaluated by every run, after the matrix's own ``external`` list.

    Raises:
        CxrfaError: an impossible or invalid cell, naming the file, the cell and the key.
    """
    where = matrix.source or matrix.name
    chosen = list(cells) if cells is not None else list(matrix.cells)
    for cell in chosen:
        if cell not in matrix.cells:
            raise CxrfaError(f"{where}: no cell {cell!r}; cells: {', '.join(matrix.cells)}")
    axis_names = list(matrix.axes)
    combos = list(itertools.product(*(matrix.axes[a].items() for a in axis_names))) or [()]
    levels = _fraction_levels(matrix, fractions, where)
    tests = [e.model_dump(mode="json") for e in [*matrix.external, *external]]
    runs: list[RunConfig] = []
    for cell in chosen:
        for combo, fraction in itertools.product(combos, levels):
            tree = deep_merge(matrix.base, matrix.cells[cell] or {})
            for _, (_, axis_override) in zip(axis_names, combo, strict=True):
                tree = deep_merge(tree, axis_override or {})
            if fraction is not None:
                tree = set_dotted(tree, "train.label_fraction", fraction)
            if tests:
                tree = set_dotted(tree, "data.external", tests)
            for dotted, value in (overrides or {}).items():
                tree = set_dotted(tree, dotted, value)
            tree = _resolve_backbones(tree, backbones)
            axes = {a: str(v) for a, (v, _) in zip(axis_names, combo, strict=True)}
            name = cell if not axes else cell + "".join(f"[{a}={v}]" for a, v in axes.items())
            if fraction is not None:
                name += FRACTION_SEP + fraction_name(fraction)
                axes["fraction"] = fraction_name(fraction)
            for seed in seeds if seeds is not None else matrix.seeds:
                runs.append(
                    validate(
                        RunConfig,
                        {**tree, "cell": name, "seed": seed, "axes": axes},
                        f"{where}: cell {name!r}",
                    )
                )
    _check_prompt_sets(runs, where)
    return runs


def _fraction_levels(
    matrix: AblationMatrix, fractions: Sequence[float] | None, where: str
) -> list[float | None]:
    """The label fractions to cross every cell with ([None] = no fraction axis)."""
    chosen = list(fractions) if fractions is not None else matrix.fractions
    if chosen is None:
        return [None]
    try:
        check_fractions(chosen, f"{where}: fractions: ")
    except ValueError as err:
        raise CxrfaError(str(err)) from None
    if "fraction" in matrix.axes:
        raise CxrfaError(f"{where}: axes: 'fraction' is the label-fraction axis; rename that axis")
    return [float(f) for f in chosen]


def _check_prompt_sets(runs: Sequence[RunConfig], where: str) -> None:
    """Every text cell's ``model.prompts`` names a readable prompt set (before any run starts)."""
    from cxrfa.prompts import load_prompt_set

    for spec in sorted({r.model.prompts for r in runs if r.model.text is not None}):
        try:
            load_prompt_set(spec)
        except CxrfaError as err:
            raise CxrfaError(f"{where}: model.prompts: {err}") from None
