"""Format readers: one module per format, each turning a dataset's files into one :class:`RawTable`.

The shared pieces (the table, the ``--format`` registry, CSV reading and the one label-value parser that every
format with a value per label uses) are in :mod:`cxrfa.data.readers.base`. Adding a format is one module here
with a function decorated by :func:`register_reader`, and its name in :data:`FORMATS`. Checking the images,
splitting and writing happen in :mod:`cxrfa.data.indexing`.
"""

from __future__ import annotations

import importlib

from cxrfa.data.readers.base import (
    BadRow,
    RawTable,
    Reader,
    ReaderInfo,
    ReadOptions,
    get_reader,
    list_readers,
    register_reader,
)

__all__ = [
    "FORMATS",
    "BadRow",
    "RawTable",
    "ReadOptions",
    "Reader",
    "ReaderInfo",
    "get_reader",
    "list_readers",
    "register_reader",
]

# The format modules, in the order `cxrfa data formats` lists them; importing one registers its reader.
FORMATS: tuple[str, ...] = ("nih", "chexpert", "mimic", "generic")
for _module in FORMATS:
    importlib.import_module(f"{__name__}.{_module}")
