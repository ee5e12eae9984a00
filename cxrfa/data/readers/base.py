"""What every format reader shares: the table it returns, the registry, CSV reading and the label-value parser.

A reader returns a :class:`RawTable`: the manifest's meta columns, one column per *target* label (1/0/NaN,
harmonised with :func:`cxrfa.labels.harmonise`: a label the source lacks is NaN, never 0), plus ``_file`` and
``_line`` so every later problem can name the source row. Rows a reader finds unusable (an unknown label
name, an unexpected value) are listed in ``bad`` rather than raised, so ``--skip-bad`` can drop them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.data.manifest import NA_STRINGS
from cxrfa.errors import CxrfaError
from cxrfa.io import require_regular
from cxrfa.labels import Blank, Uncertain, harmonise

INTERNAL_COLUMNS = ("_file", "_line")  # source file and row of each row, added by the readers


@dataclass
class BadRow:
    """A source row that cannot be used, and why (one line)."""

    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.line}: {self.problem}"


@dataclass
class RawTable:
    """What a reader produces: rows (meta + target labels + ``_file``/``_line``) and unusable rows."""

    frame: pd.DataFrame
    labels: list[str]
    bad: list[BadRow] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)  # rows left out on purpose (e.g. lateral views)
    split_given: bool = False  # the source fixes the split (e.g. NIH lists, MIMIC split.csv)


# ---------------------------------------------------------------------------------------------------------
# The registry: ``--format`` names (CLI, pipeline recipes) come from here and nowhere else


@dataclass(frozen=True)
class ReadOptions:
    """Everything ``cxrfa data index`` passes to a reader; each reader uses what its format needs."""

    root: Path  # dataset folder; manifest paths are relative to it
    csv: Path | None  # the label CSV when not at its standard place
    target: list[str]  # the label set's names, in order
    uncertain: Uncertain = "ignore"
    blank: Blank = "zero"
    frontal_only: bool = False
    columns: dict[str, str] = field(default_factory=dict)  # generic CSV: manifest key -> CSV column


Reader = Callable[[ReadOptions], RawTable]


@dataclass(frozen=True)
class ReaderInfo:
    """One registered format."""

    name: str  # the --format value
    description: str  # first line of the reader's docstring
    read: Reader
    filters_views: bool  # applies --frontal-only itself (from its own view columns)


_READERS: dict[str, ReaderInfo] = {}


def register_reader(name: str, filters_views: bool = False) -> Callable[[Reader], Reader]:
    """Decorator registering ``fn(options) -> RawTable`` as ``--format name``."""

    def wrap(fn: Reader) -> Reader:
        doc = (fn.__doc__ or "").strip().splitlines()
        _READERS[name] = ReaderInfo(name, doc[0] if doc else "", fn, filters_views)
        return fn

    return wrap


def list_readers() -> list[ReaderInfo]:
    """Every registered format, in registration order."""
    return list(_READERS.values())


def get_reader(name: str) -> ReaderInfo:
    """The reader of ``--format name``.

    Raises:
        CxrfaError: unknown format; the message lists the registered ones.
    """
    if name not in _READERS:
        raise CxrfaError(f"unknown --format {name!r}; known: {', '.join(_READERS)}")
    return _READERS[name]


# ---------------------------------------------------------------------------------------------------------
# Reading source files


def read_csv(path: Path, **kwargs: object) -> pd.DataFrame:
    """Read a CSV; a missing, empty, malformed or not regular (FIFO, device) file is one :class:`CxrfaError`
    line naming it."""
    require_regular(path, "CSV file")
    try:
        return pd.read_csv(path, **kwargs)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise CxrfaError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise CxrfaError(f"{path}: the file is empty; expected a CSV with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        msg = " ".join(str(err).split())
        raise CxrfaError(f"{path}: malformed CSV ({msg}); fix the file or re-export it") from None


def require_columns(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Raise one line naming the file and the missing columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        # the user's columns, not our bookkeeping
        found = [str(c) for c in frame.columns if c not in INTERNAL_COLUMNS]
        hint = ""
        if len(found) == 1 and (sep := next((s for s in ";\t|" if s in found[0]), None)):
            hint = (
                f" (the header is one column: the file seems separated by {sep!r}; save it comma-separated)"
            )
        raise CxrfaError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found: {', '.join(found)}{hint}"
        )


def number_lines(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``frame`` with ``_file`` (the file's name) and ``_line`` (1-based, after the header line) added."""
    frame = frame.reset_index(drop=True)
    frame["_file"] = path.name
    frame["_line"] = np.arange(len(frame)) + 2
    return frame


def find_first(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that is a file in ``root``, or None."""
    return next((root / n for n in names if (root / n).is_file()), None)


def to_target(source: pd.DataFrame, source_labels: list[str], target: list[str]) -> pd.DataFrame:
    """(N, C_target) float32 frame; labels the source lacks are NaN."""
    mapping = harmonise(source_labels, target)
    out = pd.DataFrame(index=source.index)
    for lab, src in mapping.items():
        out[lab] = source[src].astype("float32") if src is not None else np.float32(np.nan)
    return out


# ---------------------------------------------------------------------------------------------------------
# Label values: one parser for every reader whose source writes a value per label

# A blank cell: empty, or any spelling pandas' CSV reader takes for a missing value (``nan``, ``None``,
# ``<NA>``, ``NA``, ``NULL``, ``#N/A``, ...: what a frame, R or a spreadsheet writes for a missing value),
# in any case, since spreadsheets change case.
BLANK_TOKENS = frozenset({"", *(s.lower() for s in NA_STRINGS)})
# Words some label exports use instead of 1/0.
WORD_VALUES = {"true": "1", "yes": "1", "false": "0", "no": "0"}
EXPECTED_VALUES = "1, 0, -1 (uncertain), yes/no, true/false or blank"


def label_values(
    frame: pd.DataFrame, columns: list[str], path: Path, uncertain: Uncertain, blank: Blank
) -> tuple[pd.DataFrame, list[BadRow]]:
    """Map raw label cells to 1/0/NaN, the same way for every format.

    Cells are compared stripped and case-insensitive: a number equal to 1 or 0 (``1``, ``1.0``, `` 0.00 ``)
    or ``true``/``yes``/``false``/``no`` is 1 or 0; -1 (CheXpert's "uncertain") follows ``uncertain``
    (``ones`` -> 1, ``zeros`` -> 0, ``ignore`` -> unknown); a blank cell (:data:`BLANK_TOKENS`) follows
    ``blank`` (``zero`` -> 0, the labeller's "not mentioned"; ``unknown`` -> NaN). Anything else is a bad row.

    Args:
        frame: the source rows as strings, with ``_line``.
        columns: the label columns of ``frame`` to read.
        path: the file the rows came from (named by each bad row).
        uncertain: the policy for -1.
        blank: the policy for blank cells.

    Returns:
        (N, len(columns)) float32 frame with the same column names (NaN where a value is unknown or bad),
        and one :class:`BadRow` per row with an unexpected value, naming its first such column.
    """
    raw = frame[columns].astype(str).apply(lambda s: s.str.strip())
    tokens = raw.apply(lambda s: s.str.lower())
    is_blank = tokens.isin(BLANK_TOKENS)
    values = tokens.apply(lambda s: pd.to_numeric(s.replace(WORD_VALUES), errors="coerce"))
    odd = (values.isna() & ~is_blank) | (values.notna() & ~values.isin([1.0, 0.0, -1.0]))
    bad = []
    for i in np.flatnonzero(odd.to_numpy().any(axis=1)):
        col = columns[int(np.flatnonzero(odd.to_numpy()[i])[0])]
        bad.append(
            BadRow(
                path.name,
                int(frame["_line"].iat[i]),
                f"column {col!r} has {raw[col].iat[i]!r}; expected {EXPECTED_VALUES}",
            )
        )
    unc = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    out = values.mask(values == -1.0, unc).mask(odd, np.nan)
    out = out.mask(is_blank, 0.0 if blank == "zero" else np.nan)
    return out.astype("float32"), bad
