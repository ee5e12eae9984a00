"""The search space: the cell a study tunes, sampling its ``tune.params`` and applying the values."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from optuna.trial import Trial

from cxrfa.config import AblationMatrix, BackboneSet, RunConfig, SearchSpace, expand, set_dotted, validate
from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)


ON = "use:"  # prefix of the yes/no parameter of an optional search dimension


def select_cell(
    matrix: AblationMatrix,
    backbones: BackboneSet,
    cell: str,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The resolved config a study tunes: ``cell`` (or ``cell[axis=value]`` for a matrix with axes).

    Raises:
        CxrfaError: unknown cell, or a base cell name that is ambiguous because of the matrix's axes.
    """
    where = matrix.source or matrix.name
    base = cell.split("[", 1)[0]
    if base not in matrix.cells:
        raise CxrfaError(f"{where}: no cell {cell!r}; cells: {', '.join(matrix.cells)}")
    seeds = [seed if seed is not None else matrix.seeds[0]]
    runs = expand(matrix, backbones, seeds=seeds, overrides=overrides, cells=[base])
    chosen = [r for r in runs if r.cell == cell] or (runs if len(runs) == 1 else [])
    if not chosen:
        raise CxrfaError(
            f"{where}: cell {cell!r} has several axis values; pick one of: {', '.join(r.cell for r in runs)}"
        )
    return chosen[0]


def apply_values(cfg: RunConfig, values: Mapping[str, Any], where: str) -> RunConfig:
    """``cfg`` with dotted-key values set, validated like any config (one-line CxrfaError naming the key)."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        tree = set_dotted(tree, key, value)
    return validate(RunConfig, tree, where)


def _current(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_space(space: SearchSpace, cfg: RunConfig, where: str) -> None:
    """Fail fast on an empty search space or a dotted key the config does not have.

    Raises:
        CxrfaError: naming the matrix file and the key.
    """
    if not space.params:
        raise CxrfaError(
            f"{where}: the tune: section has no params; add e.g. 'loss.semantic: {{low: 0.01, high: 2.0}}'"
        )
    flat = cfg.flat()
    for key, rng in space.params.items():
        if key not in flat:
            raise CxrfaError(
                f"{where}: tune.params: {key!r} is not a config key (e.g. loss.semantic, train.lr, model.tau)"
            )
        probe = rng.choices[0] if rng.choices is not None else rng.low
        apply_values(cfg, {key: probe}, f"{where}: tune.params.{key}")


def sample_values(trial: Trial, space: SearchSpace, cfg: RunConfig) -> dict[str, Any]:
    """Draw one value per search dimension; an optional dimension may be switched off (value 0).

    Integer config fields are sampled as integers. The Optuna parameter names are the dotted keys, plus
    ``use:<key>`` for the yes/no choice of an optional dimension.
    """
    values: dict[str, Any] = {}
    for key, rng in space.params.items():
        if rng.optional and not trial.suggest_categorical(f"{ON}{key}", [True, False]):
            values[key] = 0
            continue
        if rng.choices is not None:
            values[key] = trial.suggest_categorical(key, rng.choices)
            continue
        current = _current(cfg, key)
        if isinstance(current, int) and not isinstance(current, bool):
            values[key] = trial.suggest_int(key, math.ceil(rng.low), math.floor(rng.high), log=rng.log)  # type: ignore[arg-type]
        else:
            values[key] = trial.suggest_float(key, rng.low, rng.high, log=rng.log)  # type: ignore[arg-type]
    return values
