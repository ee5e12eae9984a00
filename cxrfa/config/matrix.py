"""An ablation matrix file: a base config plus named cells written as *overrides*, seeds, axes, the tuning
search space, the declared contrasts and label fractions (:class:`AblationMatrix`), and the small grammars of
its names (``cell - other`` contrasts, ``cell@0.1`` fractions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cxrfa.config.base import _Frozen
from cxrfa.config.run import ExternalSet


class ParamRange(_Frozen):
    """One dimension of a tuning search space."""

    low: float | None = None
    high: float | None = None
    log: bool = True  # sample log-uniformly
    optional: bool = False  # the term may also be switched off (value 0), sampled as a yes/no choice
    choices: list[Any] | None = None  # categorical instead of a range

    @model_validator(mode="after")
    def _complete(self) -> ParamRange:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("a search dimension needs low and high, or choices")
        if self.choices is None and not self.low < self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.choices is None and self.low <= 0:  # type: ignore[operator]
            raise ValueError("a log-uniform range needs low > 0")
        return self


class SearchSpace(_Frozen):
    """The ``tune:`` section of a matrix file: dotted config paths -> ranges."""

    metric: Literal["val/macro_auc", "val/map"] = "val/macro_auc"
    params: dict[str, ParamRange] = Field(default_factory=dict)


class AblationMatrix(_Frozen):
    """A matrix file: a base config, named cells (overrides of the base), seeds, axes and a search space.

    ``model.visual`` / ``model.text`` name a backbone (``clip``, ``biomedclip``, ``custom``) that the chosen
    :class:`BackboneSet` resolves; a full mapping is accepted too.
    """

    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    cells: dict[str, dict[str, Any]]
    seeds: list[int] = Field(default_factory=lambda: [0])
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)  # axis -> value -> overrides
    tune: SearchSpace = Field(default_factory=SearchSpace)
    # The study's questions: family -> differences "cell - other cell"; `compare` tests exactly these, Holm within
    # each family. A list, so a cell added to the matrix joins a family by adding one line.
    contrasts: dict[str, list[str]] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)  # file the matrix was read from (for messages)
    # label-efficiency protocol: every cell is crossed with these train.label_fraction values (`cell@0.1`)
    fractions: list[float] | None = None
    external: list[ExternalSet] = Field(default_factory=list)  # further test sets for every run

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, fractions: list[float] | None) -> list[float] | None:
        check_fractions(fractions)
        return fractions

    @model_validator(mode="after")
    def _known_contrast_cells(self) -> AblationMatrix:
        for family, items in self.contrasts.items():
            if not items:
                raise ValueError(f"contrasts.{family} is empty; list differences as 'cell - other-cell'")
            for item in items:
                for cell in parse_contrast(item, f"contrasts.{family}"):
                    if cell not in self.cells:
                        raise ValueError(
                            f"contrasts.{family}: {item!r} names cell {cell!r}, which is not in cells "
                            f"(cells: {', '.join(self.cells)})"
                        )
        return self

    def contrast_pairs(self) -> dict[str, list[tuple[str, str]]]:
        """Family -> (cell, other) pairs of the declared contrasts, in file order."""
        return {
            f: [parse_contrast(i, f"contrasts.{f}") for i in items] for f, items in self.contrasts.items()
        }


def check_fractions(fractions: Iterable[float] | None, prefix: str = "") -> None:
    """Label fractions must lie in (0, 1] and be distinct (raises ValueError, its message after ``prefix``)."""
    if fractions is None:
        return
    values = list(fractions)
    if not values:
        raise ValueError(f"{prefix}no fraction given; list values in (0, 1], e.g. [0.01, 0.1, 1.0]")
    for f in values:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"{prefix}{f!r} is not a fraction in (0, 1]")
    if len({fraction_name(f) for f in values}) != len(values):
        raise ValueError(f"{prefix}a fraction is listed twice")


def fraction_name(fraction: float) -> str:
    """A label fraction as cell names and tags write it: ``0.1``, ``0.01``, ``1``."""
    return f"{fraction:g}"


FRACTION_SEP = "@"  # `dual-clip@0.1`: cell `dual-clip` at train.label_fraction 0.1


def split_fraction(cell: str) -> tuple[str, float | None]:
    """``dual-clip@0.1`` -> (``dual-clip``, 0.1); a cell without a fraction -> (cell, None)."""
    base, sep, tail = cell.rpartition(FRACTION_SEP)
    if sep:
        try:
            return base, float(tail)
        except ValueError:
            pass
    return cell, None


def parse_contrast(text: str, where: str = "contrast") -> tuple[str, str]:
    """``"dual-clip - dual-learned"`` -> ``("dual-clip", "dual-learned")``.

    The separator is `` - `` (spaces around the minus), since cell names contain hyphens.

    Raises:
        ValueError: not two distinct names around one `` - ``.
    """
    parts = [p.strip() for p in str(text).split(" - ")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"{where}: {text!r} is not 'cell - other-cell' (two different cells, ' - ' between)")
    return parts[0], parts[1]
