"""Matrices found, loaded and expanded: :func:`expand` resolves a matrix, with a backbone set, into one
:class:`RunConfig` per cell x axis value x label fraction x seed, in file order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrfa.config.backbones import DEMO_BACKBONES, BackboneSet
from cxrfa.config.base import read_yaml, validate
from cxrfa.config.matrix import FRACTION_SEP, AblationMatrix, check_fractions, fraction_name
from cxrfa.config.run import ExternalSet, RunConfig
from cxrfa.config.trees import deep_merge, set_dotted
from cxrfa.errors import CxrfaError

# the matrices folder shipped inside the package (a symlink to the repository's ablations/)
PACKAGED_MATRICES = Path(__file__).parent.parent / "matrices"


def find_matrix(name: str, search: Iterable[Path] = (Path("ablations"),)) -> Path:
    """Resolve ``--matrix``: ``ablations/NAME.yaml``, then a path, then the matrices packaged with cxrfa."""
    for folder in search:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    if Path(name).is_file():
        return Path(name)
    if (PACKAGED_MATRICES / f"{name}.yaml").is_file():
        return PACKAGED_MATRICES / f"{name}.yaml"
    known = sorted({p.stem for f in [*search, PACKAGED_MATRICES] if f.is_dir() for p in f.glob("*.yaml")})
    raise CxrfaError(
        f"no matrix {name!r} (looked in ablations/, as a path, and packaged); known: {', '.join(known)}"
    )


def load_matrix(name_or_path: str) -> AblationMatrix:
    """Read and validate a matrix file; errors name the file and the key."""
    path = find_matrix(name_or_path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise CxrfaError(f"{path}: a matrix file must be a mapping with 'name' and 'cells'")
    matrix = validate(AblationMatrix, {**raw, "source": str(path)}, str(path))
    if not matrix.cells:
        raise CxrfaError(
            f"{path}: 'cells' is empty; a matrix needs at least one cell (e.g. 'baseline: {{}}')"
        )
    if not matrix.seeds:
        raise CxrfaError(f"{path}: 'seeds' is empty; list at least one seed, e.g. 'seeds: [0]'")
    expand(matrix, DEMO_BACKBONES)  # impossible cells fail now, naming the file
    return matrix


def _resolve_backbones(tree: dict[str, Any], backbones: BackboneSet) -> dict[str, Any]:
    model = dict(tree.get("model", {}))
    for key in ("visual", "text"):
        if key in model:
            model[key] = backbones.resolve(model[key])
    return {**tree, "model": model}


def expand(
    matrix: AblationMatrix,
    backbones: BackboneSet,
    seeds: list[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cells: Iterable[str] | None = None,
    fractions: Sequence[float] | None = None,
    external: Sequence[ExternalSet] = (),
) -> list[RunConfig]:
    """Resolve a matrix into run configs: cells x axis values x label fractions x seeds, in file order.

    Args:
        matrix: the validated matrix.
        backbones: resolves backbone names in ``model.visual`` / ``model.text``.
        seeds: replaces the matrix's seeds when given.
        overrides: dotted-key overrides applied to every cell last (e.g. ``{"data.manifest": "m.csv"}``).
        cells: restrict to these cell names (unknown names are an error).
        fractions: replaces the matrix's ``fractions`` when given: each cell runs at each
            ``train.label_fraction``, named ``<cell>@<fraction>`` with the axis tag ``fraction``.
        external: test sets evaluated by every run, after the matrix's own ``external`` list.

    Raises:
        CxrfaError: an impossible or invalid cell, naming the file, the cell and the key.
    """
    where = matrix.source or matrix.name
    chosen = list(cells) if cells is not None else list(matrix.cells)
    for cell in chosen:
        if cell not in matrix.cells:
            raise CxrfaError(f"{where}: no cell {cell!r}; cells: {', '.join(matrix.cells)}")
    axis_names = list(matrix.axes)
    combos = list(itertools.product(*(matrix.axes[a].items() for a in axis_names))) or [()]
    levels = _fraction_levels(matrix, fractions, where)
    tests = [e.model_dump(mode="json") for e in [*matrix.external, *external]]
    runs: list[RunConfig] = []
    for cell in chosen:
        for combo, fraction in itertools.product(combos, levels):
            tree = deep_merge(matrix.base, matrix.cells[cell] or {})
            for _, (_, axis_override) in zip(axis_names, combo, strict=True):
                tree = deep_merge(tree, axis_override or {})
            if fraction is not None:
                tree = set_dotted(tree, "train.label_fraction", fraction)
            if tests:
                tree = set_dotted(tree, "data.external", tests)
            for dotted, value in (overrides or {}).items():
                tree = set_dotted(tree, dotted, value)
            tree = _resolve_backbones(tree, backbones)
            axes = {a: str(v) for a, (v, _) in zip(axis_names, combo, strict=True)}
            name = cell if not axes else cell + "".join(f"[{a}={v}]" for a, v in axes.items())
            if fraction is not None:
                name += FRACTION_SEP + fraction_name(fraction)
                axes["fraction"] = fraction_name(fraction)
            for seed in seeds if seeds is not None else matrix.seeds:
                runs.append(
                    validate(
                        RunConfig,
                        {**tree, "cell": name, "seed": seed, "axes": axes},
                        f"{where}: cell {name!r}",
                    )
                )
    _check_prompt_sets(runs, where)
    return runs


def _fraction_levels(
    matrix: AblationMatrix, fractions: Sequence[float] | None, where: str
) -> list[float | None]:
    """The label fractions to cross every cell with ([None] = no fraction axis)."""
    chosen = list(fractions) if fractions is not None else matrix.fractions
    if chosen is None:
        return [None]
    try:
        check_fractions(chosen, f"{where}: fractions: ")
    except ValueError as err:
        raise CxrfaError(str(err)) from None
    if "fraction" in matrix.axes:
        raise CxrfaError(f"{where}: axes: 'fraction' is the label-fraction axis; rename that axis")
    return [float(f) for f in chosen]


def _check_prompt_sets(runs: Sequence[RunConfig], where: str) -> None:
    """Every text cell's ``model.prompts`` names a readable prompt set (before any run starts)."""
    from cxrfa.prompts import load_prompt_set

    for spec in sorted({r.model.prompts for r in runs if r.model.text is not None}):
        try:
            load_prompt_set(spec)
        except CxrfaError as err:
            raise CxrfaError(f"{where}: model.prompts: {err}") from None
