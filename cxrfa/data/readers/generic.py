"""Any CSV: ``--columns`` maps manifest keys and label names to the file's columns."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.data.readers.base import (
    RawTable,
    ReadOptions,
    label_values,
    number_lines,
    read_csv,
    register_reader,
    require_columns,
)
from cxrfa.errors import CxrfaError
from cxrfa.labels import Blank, Uncertain, harmonise

log = logging.getLogger(__name__)

_META_KEYS = ("path", "patient_id", "study_id", "split", "sex", "age", "view", "domain", "report")


def parse_columns(spec: str | None) -> dict[str, str]:
    """``path=Image,patient_id=PID,Cardiomegaly=cardio`` -> ``{"path": "Image", ...}``."""
    mapping: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CxrfaError(
                f"--columns: {item.strip()!r} is not KEY=COLUMN (e.g. path=Image,patient_id=PID)"
            )
        mapping[key.strip()] = value.strip()
    return mapping


def read_generic(
    root: Path,
    csv_path: Path | None,
    target: list[str],
    columns: dict[str, str],
    uncertain: Uncertain,
    blank: Blank,
) -> RawTable:
    """Any CSV: ``columns`` maps manifest keys (meta columns or target label names) to the CSV's columns.

    Unmapped meta keys default to a column of the same name. Every target label is read from its ``columns``
    entry, else from a column whose name matches it (synonyms included): mapping one label keeps the others.
    Label values are read as every reader reads them (:func:`cxrfa.data.readers.base.label_values`): 1, 0,
    -1 (``--uncertain``), yes/no, true/false or blank (``--blank``).
    """
    if csv_path is None:
        raise CxrfaError("--format csv needs --csv FILE (and usually --columns path=...,patient_id=...)")
    frame = number_lines(read_csv(csv_path, dtype=str, keep_default_na=False), csv_path)
    unknown = [k for k in columns if k not in _META_KEYS and k not in target]
    if unknown:
        raise CxrfaError(
            f"--columns: unknown label {unknown[0]!r} for this label set; known: {', '.join(target)} "
            f"(and meta keys {', '.join(_META_KEYS)})"
        )
    meta = {k: columns.get(k, k) for k in _META_KEYS}
    require_columns(frame, csv_path, [meta["path"], meta["patient_id"], *[columns[k] for k in columns]])
    explicit = {lab: columns[lab] for lab in target if lab in columns}
    spare = [c for c in frame.columns if not c.startswith("_") and c not in set(columns.values())]
    by_name = {t: s for t, s in harmonise(spare, target).items() if s and t not in explicit}
    if explicit and by_name:  # mapping one label must not silently drop the columns named like the others
        log.info(
            "%s: label column(s) matched by name besides --columns: %s",
            csv_path.name,
            ", ".join(f"{t}={s}" for t, s in by_name.items()),
        )
    label_cols = {t: explicit.get(t) or by_name[t] for t in target if t in explicit or t in by_name}
    used = {*label_cols.values(), *(meta[k] for k in _META_KEYS)}
    ignored = [c for c in frame.columns if not c.startswith("_") and c not in used]
    if ignored:  # e.g. a finding outside the label set: say so rather than drop it unseen
        log.info(
            "%s: column(s) ignored (not a label of the label set, not a meta key): %s",
            csv_path.name,
            ", ".join(ignored),
        )
    if not label_cols:
        raise CxrfaError(
            f"{csv_path}: no label columns found; map them with --columns Label=column (labels: {', '.join(target)})"
        )
    sources = list(dict.fromkeys(label_cols.values()))  # two labels may read one column
    values, bad = label_values(frame, sources, csv_path, uncertain, blank)
    out = pd.DataFrame({k: frame[meta[k]] if meta[k] in frame.columns else pd.NA for k in _META_KEYS})
    out["domain"] = (
        out["domain"].fillna(csv_path.stem)
        if "domain" in columns or "domain" in frame.columns
        else csv_path.stem
    )
    out["path"] = out["path"].astype(str).str.strip()
    out["_file"], out["_line"] = frame["_file"], frame["_line"]
    for lab in target:
        out[lab] = values[label_cols[lab]] if lab in label_cols else np.float32(np.nan)
    out["split"] = out["split"].replace({"": pd.NA, "validate": "val", "valid": "val", "validation": "val"})
    given = out["split"].notna().all() and out["split"].isin(["train", "val", "test"]).all()
    return RawTable(out, target, bad, split_given=bool(given))


@register_reader("csv")
def _generic(o: ReadOptions) -> RawTable:
    """Any CSV: --csv FILE with --columns mapping manifest keys to its columns."""
    return read_generic(o.root, o.csv, o.target, o.columns, o.uncertain, o.blank)
