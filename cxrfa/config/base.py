"""From a file to a frozen model: the base of every config model, YAML reading that refuses a duplicate key,
and validation whose failure is one line naming the file and the key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cxrfa.errors import CxrfaError


class _Frozen(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `.nan` in YAML is an error naming the key, not a run that diverges
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)


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
