"""Tuned overlays: ``ablations/tuned/<matrix>/<cell>.yaml`` maps dotted config keys to the best values.

``cxrfa tune`` writes them (:func:`write_overlay`); ``cxrfa ablate --tuned`` applies them (:func:`apply_overlays`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cxrfa.config import AblationMatrix, RunConfig, read_yaml
from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_write_text
from cxrfa.tuning.space import apply_values

log = logging.getLogger(__name__)


def overlay_path(matrix: str, cell: str, root: Path = Path("ablations")) -> Path:
    """``<root>/tuned/<matrix>/<cell>.yaml``."""
    return Path(root) / "tuned" / matrix / f"{cell}.yaml"


def write_overlay(path: Path, values: Mapping[str, Any], header: Sequence[str] = ()) -> Path:
    """Write dotted key -> value as YAML with a comment header, atomically."""
    from cxrfa.tracking import redact_text

    # the file users commit: a header quoting the command (its --storage) never carries a secret
    lines = [f"# {redact_text(line)}".rstrip() for line in header]
    body = yaml.safe_dump({k: _plain(v) for k, v in values.items()}, sort_keys=True, default_flow_style=False)
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else "") + body)
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def read_overlay(path: Path) -> dict[str, Any]:
    """An overlay's dotted key -> value mapping.

    Raises:
        CxrfaError: not YAML, not a mapping, or a value that is not a scalar/list.
    """
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise CxrfaError(
            f"{path}: an overlay must map dotted config keys to values (e.g. 'loss.semantic: 0.3')"
        )
    for key, value in raw.items():
        if not isinstance(key, str) or "." not in key:
            raise CxrfaError(f"{path}: key {key!r} is not a dotted config key (e.g. loss.semantic)")
        if isinstance(value, Mapping):
            raise CxrfaError(f"{path}: {key}: value must be a scalar or list, not a mapping")
    return dict(raw)


def apply_overlays(
    matrix: AblationMatrix, runs: Sequence[RunConfig], root: Path = Path("ablations")
) -> list[RunConfig]:
    """Apply ``<root>/tuned/<matrix>/<cell>.yaml`` to the runs of each tuned cell (others pass unchanged).

    A run of ``cell[axis=v]`` uses that cell's own overlay when it exists, else the base cell's. The result is
    validated like any config, so its config hash changes with the tuned values.

    Raises:
        CxrfaError: no overlay exists for any of the runs, or an overlay is malformed or sets a bad key.
    """
    out, applied = [], set()
    for cfg in runs:
        candidates = [
            overlay_path(matrix.name, cfg.cell, root),
            overlay_path(matrix.name, cfg.cell.split("[", 1)[0], root),
        ]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            out.append(cfg)
            continue
        out.append(apply_values(cfg, read_overlay(path), f"{path}"))
        applied.add(str(path))
    if not applied:
        raise CxrfaError(
            f"--tuned: no overlays in {Path(root) / 'tuned' / matrix.name}/ for these cells; run `cxrfa tune --matrix "
            f"{matrix.name} --cell CELL --trials N` first"
        )
    log.info("applied %d tuned overlay(s): %s", len(applied), ", ".join(sorted(applied)))
    return out
