"""Typed, frozen configuration: every run is fully described by one :class:`RunConfig`.

All models are pydantic v2, frozen and ``extra="forbid"`` so a typo in a key fails loudly. An ablation
matrix (:class:`AblationMatrix`) is a base config plus named cells written as *overrides*; :func:`expand`
resolves it, with a backbone set (:class:`BackboneSet`), into one ``RunConfig`` per cell x axis value x seed,
each with a stable :meth:`RunConfig.config_hash`.

One module per concept: ``run`` (the run config and its sections), ``backbones`` (encoders and backbone sets),
``matrix`` (a matrix file's model and its cell, contrast and fraction names), ``expansion`` (finding, loading
and expanding matrices), ``base`` (the frozen base model, YAML reading, one-line validation errors), ``trees``
(dotted keys and merging). The names below are the package's interface.
"""

from __future__ import annotations

from cxrfa.config.backbones import (
    DEMO_BACKBONES,
    REAL_BACKBONES,
    BackboneConfig,
    BackboneSet,
    read_backbones,
)
from cxrfa.config.base import (
    read_yaml,
    validate,
)
from cxrfa.config.expansion import (
    PACKAGED_MATRICES,
    expand,
    find_matrix,
    load_matrix,
)
from cxrfa.config.matrix import (
    FRACTION_SEP,
    AblationMatrix,
    ParamRange,
    SearchSpace,
    check_fractions,
    fraction_name,
    parse_contrast,
    split_fraction,
)
from cxrfa.config.run import (
    DEVICE_PATTERN,
    MAX_SEED,
    DataConfig,
    ExternalSet,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from cxrfa.config.trees import (
    deep_merge,
    flatten,
    set_dotted,
)

__all__ = [
    "AblationMatrix",
    "BackboneConfig",
    "BackboneSet",
    "DEMO_BACKBONES",
    "DEVICE_PATTERN",
    "DataConfig",
    "ExternalSet",
    "FRACTION_SEP",
    "LossConfig",
    "MAX_SEED",
    "ModelConfig",
    "PACKAGED_MATRICES",
    "ParamRange",
    "REAL_BACKBONES",
    "RunConfig",
    "SearchSpace",
    "TrainConfig",
    "check_fractions",
    "deep_merge",
    "expand",
    "find_matrix",
    "flatten",
    "fraction_name",
    "load_matrix",
    "parse_contrast",
    "read_backbones",
    "read_yaml",
    "set_dotted",
    "split_fraction",
    "validate",
]
