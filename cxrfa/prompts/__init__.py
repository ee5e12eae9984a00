"""Prompt sets: the text templates that turn a label into its positive and negated prompts.

A prompt set is a YAML file with a ``name``, an optional ``description`` and two equally long lists of
templates, ``positive`` and ``negative``, each containing ``{label}`` exactly once. Template i of one list is
paired with template i of the other (zero-shot scores a label by its positive against its negated prompt).
The sets shipped with cxrfa live beside this module (``default``: cxrfa's original templates, ``chexzero``:
"{label}" / "no {label}"); ``model.prompts`` names one of them or gives the path of a file.

A set is identified by its *content hash* (the templates, not the name or the file), which the label
embedding cache key includes and every run logs, so two files with the same templates share cached
embeddings and an edited file never reuses stale ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import yaml

from cxrfa.errors import CxrfaError

__all__ = [
    "DEFAULT",
    "PACKAGED",
    "TAG_PROMPTS",
    "TAG_PROMPTS_HASH",
    "PromptSet",
    "list_prompt_sets",
    "load_prompt_set",
    "prompt_tags",
]

PACKAGED = Path(__file__).parent
DEFAULT = "default"
TAG_PROMPTS = "cxrfa.prompts"  # run tag: the prompt set's name
TAG_PROMPTS_HASH = "cxrfa.prompts_hash"  # run tag: its content hash
_KEYS = {"name", "description", "positive", "negative"}


@dataclass(frozen=True)
class PromptSet:
    """A named pair of template lists (positive, negative), equally long, each template with one ``{label}``.

    Attributes:
        name: the set's name (from the file).
        positive: templates stating the finding, e.g. ``"there is {label}."``.
        negative: templates negating it, paired by position with ``positive``.
        description: one line on where the templates come from.
        source: the file it was read from.
    """

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    description: str = ""
    source: str = ""

    @property
    def content_hash(self) -> str:
        """12 hex digits of SHA-256 over the templates (order matters, the name does not)."""
        blob = json.dumps({"positive": self.positive, "negative": self.negative}, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def templates(self, negative: bool = False) -> tuple[str, ...]:
        """The positive (or negated) templates."""
        return self.negative if negative else self.positive

    def texts(self, label_text: str, negative: bool = False) -> list[str]:
        """Every template of one polarity filled with ``label_text``."""
        return [t.format(label=label_text) for t in self.templates(negative)]


def list_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with cxrfa."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def _check_template(template: Any, where: str) -> str:
    if not isinstance(template, str) or not template.strip():
        raise CxrfaError(f"{where}: a template must be a non-empty string, e.g. 'there is {{label}}.'")
    try:
        fields = [f for _, f, _, _ in Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise CxrfaError(
            f"{where}: {template!r} is not a valid template ({err}); write braces as {{{{ }}}}"
        ) from None
    if fields != ["label"]:
        raise CxrfaError(f"{where}: {template!r} must contain {{label}} exactly once and no other {{field}}")
    return template


def _parse(raw: Any, source: Path) -> PromptSet:
    if not isinstance(raw, dict):
        raise CxrfaError(f"{source}: a prompt set must be a mapping with name, positive and negative")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise CxrfaError(f"{source}: {unknown[0]}: unknown key; keys are {', '.join(sorted(_KEYS))}")
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise CxrfaError(f"{source}: name: missing; give the set a name, e.g. name: my-prompts")
    lists = {}
    for key in ("positive", "negative"):
        items = raw.get(key)
        if not isinstance(items, list) or not items:
            raise CxrfaError(f"{source}: {key}: expected a non-empty list of templates containing {{label}}")
        lists[key] = tuple(_check_template(t, f"{source}: {key}[{i}]") for i, t in enumerate(items))
    if len(lists["positive"]) != len(lists["negative"]):
        raise CxrfaError(
            f"{source}: positive has {len(lists['positive'])} templates and negative "
            f"{len(lists['negative'])}; pair them one to one (template i with template i)"
        )
    return PromptSet(
        name=raw["name"].strip(),
        positive=lists["positive"],
        negative=lists["negative"],
        description=str(raw.get("description") or ""),
        source=str(source),
    )


@functools.lru_cache(maxsize=64)
def _read(path: Path, mtime_ns: int) -> PromptSet:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise CxrfaError(f"{path}: cannot read prompt set ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise CxrfaError(f"{path}: is not valid YAML ({getattr(err, 'problem', err)})") from None
    return _parse(raw, path)


def load_prompt_set(spec: str | PromptSet = DEFAULT) -> PromptSet:
    """A prompt set by name (shipped with cxrfa) or by path to a YAML file.

    Args:
        spec: a shipped set's name (``default``, ``chexzero``), a YAML file path, or a set (returned as is).

    Raises:
        CxrfaError: no such set or file (listing the known names), or a malformed file (naming the key).
    """
    if isinstance(spec, PromptSet):
        return spec
    path = PACKAGED / f"{spec}.yaml"
    if "/" in spec or spec.endswith((".yaml", ".yml")) or not path.is_file():
        path = Path(spec).expanduser()
        if not path.is_file():
            raise CxrfaError(
                f"prompt set {spec!r}: not a shipped set nor a file; known: {', '.join(list_prompt_sets())} "
                "(or give the path of a YAML file)"
            )
    return _read(path.resolve(), path.stat().st_mtime_ns)


def prompt_tags(spec: str | PromptSet) -> dict[str, str]:
    """The run tags that record a prompt set: its name and content hash."""
    chosen = load_prompt_set(spec)
    return {TAG_PROMPTS: chosen.name, TAG_PROMPTS_HASH: chosen.content_hash}
