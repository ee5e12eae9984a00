"""Reading checkpoints without running code: tensors and plain values only.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a file planted in the checkpoint folder or
uploaded as a run artifact to a shared tracking server could run code on every machine that reads it. Every
checkpoint cxrfa reads goes through :func:`load_state` (``weights_only=True``): what cxrfa saves is tensors,
numbers, strings, lists and dicts, which that loader accepts.

Two failures are told apart:

- *unsafe*: the pickle asks for something other than tensors and plain values (a crafted file, or one another
  program wrote). Refused with one line; the file is left where it is for the user to inspect.
- *corrupt*: the container is damaged (truncated copy, full disk). A resume checkpoint in that state is moved
  aside (``<name>.corrupt``) and the cell restarts from scratch with a warning, so it is never blocked for
  good (:func:`load_resume_state`); any other corrupt file is one line saying how to fix it.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
_UNREADABLE = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
}  # the file, not its bytes


class UnsafeCheckpoint(CxrfaError):
    """A checkpoint holds more than tensors and plain values; it was not loaded."""


class CorruptCheckpoint(CxrfaError):
    """A checkpoint's container is damaged (truncated, not a torch file)."""


def _detail(err: BaseException, limit: int = 120) -> str:
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
    if found:
        return found.group(0)
    text = " ".join(str(err).split())
    if len(text) <= limit:
        return text
    return (
        text[:limit].rsplit(" ", 1)[0].rstrip(",;:.") + " …"
    )  # whole words: "… `torch.load` fr" reads as a typo


def unsafe(label: str, err: BaseException) -> UnsafeCheckpoint:
    """The one-line refusal of a file the weights-only unpickler rejected (``err``)."""
    return UnsafeCheckpoint(
        f"{label}: refused to load: it is not a tensors-only checkpoint ({_detail(err)}), and unpickling it "
        "could run code; cxrfa never loads such files; delete it unless you know where it came from"
    )


def load_state(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    name: str | None = None,
    fix: str = "delete it and produce it again",
    mmap: bool = False,
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name the file.

    Args:
        path: the file.
        map_location: where tensors go.
        name: how to name the file in messages (e.g. a run artifact); default the path.
        fix: what the user should do with a corrupt file.
        mmap: map tensor storages instead of reading them (a cheap check of a large file).

    Raises:
        UnsafeCheckpoint: the file holds Python objects other than tensors and plain values.
        CorruptCheckpoint: the file is truncated or not a torch checkpoint.
        CxrfaError: the file cannot be read.
    """
    label = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # foreign pickles: refused below
            mmap = mmap and zipfile.is_zipfile(path)  # a legacy (bare pickle) file cannot be mapped; read it
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise unsafe(label, err) from None
    except OSError as err:
        if err.errno in _UNREADABLE:
            raise CxrfaError(f"{label}: cannot read ({err.strerror})") from None
        raise CorruptCheckpoint(f"{label}: corrupt or truncated checkpoint ({err.strerror}); {fix}") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CorruptCheckpoint(
            f"{label}: corrupt or truncated checkpoint ({_detail(err) or type(err).__name__}); {fix}"
        ) from None


def load_resume_state(
    path: Path, map_location: str | torch.device = "cpu", keys: Iterable[str] = ()
) -> dict[str, Any] | None:
    """The state of an interrupted run, or None to start from scratch.

    None when ``path`` does not exist, or when it is corrupt (or lacks one of ``keys``): the file is then
    renamed to ``<name>.corrupt`` (kept for inspection, replaced by the next such file) and a warning names
    both, so a damaged checkpoint costs the epochs it held and never blocks its cell.

    Raises:
        UnsafeCheckpoint: the file holds more than tensors and plain values (left in place, not loaded).
    """
    if not path.is_file():
        return None
    try:
        state = load_state(path, map_location=map_location)
        missing = [k for k in keys if not isinstance(state, dict) or k not in state]
        if missing:
            raise CorruptCheckpoint(f"{path}: not a training checkpoint (no {missing[0]!r})")
    except CorruptCheckpoint as err:
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        os.replace(path, aside)
        log.warning("%s; moved it to %s and restarting this run from epoch 0", str(err).split("; ")[0], aside)
        return None
    return state
