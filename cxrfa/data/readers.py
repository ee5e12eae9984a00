"""Format readers: NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG and generic CSV -> one raw table each.

A reader returns a :class:`RawTable`: the manifest's meta columns, one column per *target* label (1/0/NaN,
harmonised with :func:`cxrfa.labels.harmonise`: a label the source lacks is NaN, never 0), plus ``_file`` and
``_line`` so every later problem can name the source row. Rows a reader finds unusable (an unknown label
name, an unexpected value) are listed in ``bad`` rather than raised, so ``--skip-bad`` can drop them.
Checking the images themselves, splitting and writing happen in :mod:`cxrfa.data.indexing`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError
from cxrfa.io import require_regular
from cxrfa.labels import CHEXPERT14, NIH14, Blank, Uncertain, harmonise

NIH_NO_FINDING = "No Finding"
log = logging.getLogger(__name__)
_INTERNAL = ("_file", "_line")  # source file and row of each row, added by the readers


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
        found = [
            str(c) for c in frame.columns if c not in _INTERNAL
        ]  # the user's columns, not our bookkeeping
        hint = ""
        if len(found) == 1 and (sep := next((s for s in ";\t|" if s in found[0]), None)):
            hint = (
                f" (the header is one column: the file seems separated by {sep!r}; save it comma-separated)"
            )
        raise CxrfaError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found: {', '.join(found)}{hint}"
        )


def _lines(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame["_file"] = path.name
    frame["_line"] = np.arange(len(frame)) + 2  # 1-based, after the header line
    return frame


def _to_target(source: pd.DataFrame, source_labels: list[str], target: list[str]) -> pd.DataFrame:
    """(N, C_target) float32 frame; labels the source lacks are NaN."""
    mapping = harmonise(source_labels, target)
    out = pd.DataFrame(index=source.index)
    for lab, src in mapping.items():
        out[lab] = source[src].astype("float32") if src is not None else np.float32(np.nan)
    return out


def _age(value: object) -> float:
    """NIH ages: ``57``, ``060Y``, ``011M``, ``020D`` -> years; anything else NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YyMmDdWw]?)\s*", str(value))
    if not match:
        return float("nan")
    number, unit = float(match.group(1)), match.group(2).upper()
    return number / {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}[unit]


# ----------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14


def _find_first(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _nih_image_paths(root: Path, names: pd.Series) -> dict[str, str]:
    """Image name -> path relative to root, from ``images/``, ``images_NNN/images/`` or the root itself."""
    found: dict[str, str] = {}
    folders = [root / "images", root, *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        rel = os.path.relpath(folder, root)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name not in found and entry.name.lower().endswith((".png", ".jpg", ".jpeg")):
                    found[entry.name] = entry.name if rel == "." else f"{rel}/{entry.name}"
    return {n: found.get(n, f"images/{n}") for n in names}


def read_nih(root: Path, csv_path: Path | None, target: list[str]) -> RawTable:
    """NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (trailing comma tolerated).

    ``Finding Labels`` is pipe-separated; ``No Finding`` means all 14 findings negative. When
    ``train_val_list.txt`` and ``test_list.txt`` are present the official test split is kept and the
    validation split is carved out of train_val by patient later.
    """
    path = csv_path or _find_first(root, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"))
    if path is None:
        raise CxrfaError(f"{root}: no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv; pass --csv FILE")
    frame = read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed")]]  # trailing comma
    require_columns(frame, path, ["Image Index", "Finding Labels", "Patient ID"])
    frame = _lines(frame, path)
    bad: list[BadRow] = []
    known = {lab.lower(): lab for lab in NIH14}
    known.update({"pleural thickening": "Pleural_Thickening", "no finding": NIH_NO_FINDING})
    source = pd.DataFrame(0.0, index=frame.index, columns=[*NIH14, NIH_NO_FINDING])
    for i, text in enumerate(frame["Finding Labels"]):
        tokens = [t.strip() for t in str(text).split("|") if t.strip()]
        unknown = [t for t in tokens if t.lower() not in known]
        if unknown or not tokens:
            what = f"unknown label {unknown[0]!r}" if unknown else "empty 'Finding Labels'"
            bad.append(
                BadRow(
                    path.name,
                    int(frame["_line"].iat[i]),
                    f"{what} in 'Finding Labels'; known: {', '.join(NIH14)}, No Finding",
                )
            )
            continue
        for t in tokens:
            source.iat[i, source.columns.get_loc(known[t.lower()])] = 1.0
        if NIH_NO_FINDING in [known[t.lower()] for t in tokens] and len(tokens) > 1:
            bad.append(BadRow(path.name, int(frame["_line"].iat[i]), "'No Finding' together with findings"))
    names = frame["Image Index"].astype(str).str.strip()
    paths = _nih_image_paths(root, names)
    out = pd.DataFrame(
        {
            "path": names.map(paths),
            "patient_id": frame["Patient ID"].astype(str).str.strip().str.lstrip("0").replace("", "0"),
            "study_id": names.str.rsplit(".", n=1).str[0],
            "sex": frame.get("Patient Gender", pd.Series(pd.NA, index=frame.index)),
            "age": frame.get("Patient Age", pd.Series(pd.NA, index=frame.index)).map(_age),
            "view": frame.get("View Position", pd.Series(pd.NA, index=frame.index)),
            "domain": "nih",
            "report": pd.NA,
            "split": pd.NA,
            "_file": frame["_file"],
            "_line": frame["_line"],
        }
    )
    out = pd.concat([out, _to_target(source, [*NIH14, NIH_NO_FINDING], target)], axis=1)
    table = RawTable(out, target, bad)
    lists = [_find_first(folder, ("train_val_list.txt",)) for folder in (root, path.parent)]
    tests = [_find_first(folder, ("test_list.txt",)) for folder in (root, path.parent)]
    train_val, test = next((p for p in lists if p), None), next((p for p in tests if p), None)
    if train_val and test:
        in_test = set(test.read_text().split())
        in_train = set(train_val.read_text().split())
        split = np.where(names.isin(in_test), "test", np.where(names.isin(in_train), "trainval", ""))
        for i in np.flatnonzero(split == ""):
            bad.append(
                BadRow(
                    path.name,
                    int(out["_line"].iat[i]),
                    f"image {names.iat[i]} is in neither {train_val.name} nor {test.name}",
                )
            )
        table.frame["split"] = pd.Series(split, index=out.index).replace("", pd.NA)
        table.split_given = True
    return table


# ----------------------------------------------------------------------------------------------------------
# CheXpert and MIMIC-CXR (CheXpert labeller output)


def chexpert_labels(
    frame: pd.DataFrame, path: Path, uncertain: Uncertain, blank: Blank
) -> tuple[pd.DataFrame, list[BadRow]]:
    """Map CheXpert-style values to 1/0/NaN: ``1.0`` -> 1, ``0.0`` -> 0, ``-1.0`` -> the uncertainty policy
    (``ones`` -> 1, ``zeros`` -> 0, ``ignore`` -> unknown), blank -> 0 (``--blank zero``) or unknown."""
    present = [c for c in CHEXPERT14 if c in frame.columns]
    values = frame[present].apply(pd.to_numeric, errors="coerce")
    raw = frame[present].astype(str).apply(lambda s: s.str.strip())
    is_blank = raw.isin(["", "nan", "NaN", "<NA>", "None"])
    odd = values.isna() & ~is_blank | (values.notna() & ~values.isin([1.0, 0.0, -1.0]))
    bad = []
    for i in np.flatnonzero(odd.to_numpy().any(axis=1)):
        col = present[int(np.flatnonzero(odd.to_numpy()[i])[0])]
        bad.append(
            BadRow(
                path.name,
                int(frame["_line"].iat[i]),
                f"column {col!r} has {raw[col].iat[i]!r}; expected 1.0, 0.0, -1.0 or blank",
            )
        )
    unc = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    out = values.mask(values == -1.0, unc).astype("float32")
    if blank == "zero":
        out = out.mask(is_blank, 0.0)
    else:
        out = out.mask(is_blank, np.nan)
    return out.astype("float32"), bad


def _chexpert_root_relative(root: Path, rel: str) -> str:
    """CheXpert paths start with the dataset folder (``CheXpert-v1.0-small/train/...``); accept either
    its parent or the folder itself as ``--root``."""
    first, _, rest = rel.partition("/")
    if rest and first == root.name and not (root / rel).exists():
        return rest
    return rel


def read_chexpert(
    root: Path,
    csv_path: Path | None,
    target: list[str],
    uncertain: Uncertain,
    blank: Blank,
    frontal_only: bool,
) -> RawTable:
    """CheXpert ``train.csv`` (+ ``valid.csv``, kept as the test split, since the official test set is held out;
    validation is then carved out of train.csv by patient).

    Patient id comes from the path (``patientNNNNN``); the study id is ``patientNNNNN/studyK``.
    """
    files = [csv_path] if csv_path else [p for p in (root / "train.csv", root / "valid.csv") if p.is_file()]
    if not files:
        raise CxrfaError(f"{root}: no train.csv or valid.csv; pass --csv FILE")
    parts, bad, filtered = [], [], {}
    for path in files:
        frame = _lines(read_csv(path, dtype=str, keep_default_na=False), path)
        require_columns(frame, path, ["Path"])
        if not any(c in frame.columns for c in CHEXPERT14):
            raise CxrfaError(
                f"{path}: no CheXpert label columns (e.g. 'Cardiomegaly'); is this a CheXpert CSV?"
            )
        labels, problems = chexpert_labels(frame, path, uncertain, blank)
        bad += problems
        rel = frame["Path"].astype(str).str.strip().map(lambda p: _chexpert_root_relative(root, p))
        pid = rel.str.extract(r"(patient\d+)", expand=False)
        study = rel.str.extract(r"(patient\d+/study\d+)", expand=False)
        for i in np.flatnonzero(pid.isna().to_numpy()):
            bad.append(
                BadRow(path.name, int(frame["_line"].iat[i]), f"no patientNNNNN in path {rel.iat[i]!r}")
            )
        lateral = frame.get("Frontal/Lateral", pd.Series("", index=frame.index)).str.lower().eq("lateral")
        view = (
            frame.get("AP/PA", pd.Series("", index=frame.index)).replace("", pd.NA).where(~lateral, "LATERAL")
        )
        sex = frame.get("Sex", pd.Series("", index=frame.index)).map({"Female": "F", "Male": "M"})
        split = ("test" if path.name.startswith("valid") else "trainval") if len(files) > 1 else pd.NA
        part = pd.DataFrame(
            {
                "path": rel,
                "patient_id": pid,
                "study_id": study,
                "sex": sex,
                "age": pd.to_numeric(frame.get("Age", pd.Series(pd.NA, index=frame.index)), errors="coerce"),
                "view": view,
                "domain": "chexpert",
                "report": pd.NA,
                "split": split,
                "_file": frame["_file"],
                "_line": frame["_line"],
            }
        )
        part = pd.concat([part, _to_target(labels, list(labels.columns), target)], axis=1)
        if frontal_only:
            filtered["lateral view"] = filtered.get("lateral view", 0) + int(lateral.sum())
            part = part[~lateral.to_numpy()]
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return RawTable(frame, target, bad, filtered, split_given=len(files) > 1)


def read_mimic(
    root: Path, target: list[str], uncertain: Uncertain, blank: Blank, frontal_only: bool
) -> RawTable:
    """MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz]`` joined on dicom/study/subject.

    Images are ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``; the official split is kept (``validate`` -> ``val``).
    """

    def find(kind: str) -> Path:
        found = _find_first(root, (f"mimic-cxr-2.0.0-{kind}.csv", f"mimic-cxr-2.0.0-{kind}.csv.gz"))
        if found is None:
            raise CxrfaError(
                f"{root}: missing mimic-cxr-2.0.0-{kind}.csv(.gz); --root must be the MIMIC-CXR-JPG folder"
            )
        return found

    lab_path, split_path, meta_path = find("chexpert"), find("split"), find("metadata")
    labels_df = read_csv(lab_path, dtype=str, keep_default_na=False)
    split_df = read_csv(split_path, dtype=str, keep_default_na=False)
    meta_df = read_csv(meta_path, dtype=str, keep_default_na=False)
    require_columns(labels_df, lab_path, ["subject_id", "study_id"])
    require_columns(split_df, split_path, ["dicom_id", "split"])
    require_columns(meta_df, meta_path, ["dicom_id", "subject_id", "study_id"])
    meta_df = _lines(meta_df, meta_path)
    frame = meta_df.merge(split_df[["dicom_id", "split"]], on="dicom_id", how="left")
    frame = frame.merge(labels_df, on=["subject_id", "study_id"], how="left", indicator=True)
    bad = [
        BadRow(
            meta_path.name,
            int(frame["_line"].iat[i]),
            f"study {frame['study_id'].iat[i]} has no row in {lab_path.name}",
        )
        for i in np.flatnonzero((frame["_merge"] == "left_only").to_numpy())
    ]
    frame = frame.drop(columns="_merge").fillna({c: "" for c in CHEXPERT14 if c in frame.columns})
    labels, problems = chexpert_labels(frame, meta_path, uncertain, blank)
    subject = frame["subject_id"].astype(str)
    path = (
        "files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + frame["study_id"].astype(str)
        + "/"
        + frame["dicom_id"]
        + ".jpg"
    )
    view = frame.get("ViewPosition", pd.Series("", index=frame.index)).replace("", pd.NA)
    split = frame["split"].map({"train": "train", "validate": "val", "val": "val", "test": "test"})
    out = pd.DataFrame(
        {
            "path": path,
            "patient_id": subject,
            "study_id": frame["study_id"],
            "sex": pd.NA,
            "age": np.nan,
            "view": view,
            "domain": "mimic",
            "report": pd.NA,
            "split": split,
            "_file": frame["_file"],
            "_line": frame["_line"],
        }
    )
    for i in np.flatnonzero(split.isna().to_numpy()):
        bad.append(
            BadRow(
                meta_path.name,
                int(out["_line"].iat[i]),
                f"dicom {frame['dicom_id'].iat[i]} has no split in {split_path.name}",
            )
        )
    out = pd.concat([out, _to_target(labels, list(labels.columns), target)], axis=1)
    filtered: dict[str, int] = {}
    if frontal_only:
        frontal = view.isin(["PA", "AP"]).to_numpy()
        filtered["non-frontal view"] = int((~frontal).sum())
        out = out[frontal]
    return RawTable(out, target, bad + problems, filtered, split_given=True)


# ----------------------------------------------------------------------------------------------------------
# generic CSV with a column mapping

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
    entry, else from a column whose name matches it (synonyms included): mapping one label keeps the others. Label values: 1/0/-1 (uncertain policy)/blank (``--blank``),
    also ``true``/``false``/``yes``/``no``.
    """
    if csv_path is None:
        raise CxrfaError("--format csv needs --csv FILE (and usually --columns path=...,patient_id=...)")
    frame = _lines(read_csv(csv_path, dtype=str, keep_default_na=False), csv_path)
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
    words = {"true": "1", "yes": "1", "false": "0", "no": "0", "1.0": "1", "0.0": "0", "-1.0": "-1"}
    renamed = pd.DataFrame(
        {
            lab: frame[col].astype(str).str.strip().str.lower().replace(words)
            for lab, col in label_cols.items()
        }
    )
    renamed["_line"] = frame["_line"]
    labels, bad = _generic_values(renamed, csv_path, list(label_cols), uncertain, blank)
    out = pd.DataFrame({k: frame[meta[k]] if meta[k] in frame.columns else pd.NA for k in _META_KEYS})
    out["domain"] = (
        out["domain"].fillna(csv_path.stem)
        if "domain" in columns or "domain" in frame.columns
        else csv_path.stem
    )
    out["path"] = out["path"].astype(str).str.strip()
    out["_file"], out["_line"] = frame["_file"], frame["_line"]
    for lab in target:
        out[lab] = labels[lab] if lab in labels.columns else np.float32(np.nan)
    out["split"] = out["split"].replace({"": pd.NA, "validate": "val", "valid": "val", "validation": "val"})
    given = out["split"].notna().all() and out["split"].isin(["train", "val", "test"]).all()
    return RawTable(out, target, bad, split_given=bool(given))


def _generic_values(
    frame: pd.DataFrame, path: Path, labels: list[str], uncertain: Uncertain, blank: Blank
) -> tuple[pd.DataFrame, list[BadRow]]:
    raw = frame[labels]
    is_blank = raw.isin(["", "nan", "none", "<na>"])
    values = raw.apply(pd.to_numeric, errors="coerce")
    odd = (values.isna() & ~is_blank) | (values.notna() & ~values.isin([1.0, 0.0, -1.0]))
    bad = []
    for i in np.flatnonzero(odd.to_numpy().any(axis=1)):
        col = labels[int(np.flatnonzero(odd.to_numpy()[i])[0])]
        bad.append(
            BadRow(
                path.name,
                int(frame["_line"].iat[i]),
                f"label {col!r} has {raw[col].iat[i]!r}; expected 1, 0, -1 or blank",
            )
        )
    unc = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    out = values.mask(values == -1.0, unc)
    out = out.mask(is_blank, 0.0 if blank == "zero" else np.nan)
    return out.astype("float32"), bad


@register_reader("nih")
def _nih(o: ReadOptions) -> RawTable:
    """NIH ChestX-ray14: Data_Entry_2017*.csv and the image folders (official split lists kept)."""
    return read_nih(o.root, o.csv, o.target)


@register_reader("chexpert", filters_views=True)
def _chexpert(o: ReadOptions) -> RawTable:
    """CheXpert: train.csv / valid.csv (uncertain and blank label policies apply)."""
    return read_chexpert(o.root, o.csv, o.target, o.uncertain, o.blank, o.frontal_only)


@register_reader("mimic", filters_views=True)
def _mimic(o: ReadOptions) -> RawTable:
    """MIMIC-CXR-JPG: the chexpert, split and metadata CSVs joined (official split kept)."""
    return read_mimic(o.root, o.target, o.uncertain, o.blank, o.frontal_only)


@register_reader("csv")
def _generic(o: ReadOptions) -> RawTable:
    """Any CSV: --csv FILE with --columns mapping manifest keys to its columns."""
    return read_generic(o.root, o.csv, o.target, o.columns, o.uncertain, o.blank)
