"""The `ladder` matrix: the seed's ablation as rungs, each adding exactly one part of the alignment model to the
rung before (checked on the resolved configs), and every rung runs with its new terms on."""

from __future__ import annotations

import math

import pytest
from _helpers import SMOKE

from cxrfa.config import DEMO_BACKBONES, RunConfig, expand, load_matrix

pytestmark = pytest.mark.slow

# The parts of the seed's alignment model, in the seed's order: the resolved-config keys each part switches on.
PARTS: dict[str, set[str]] = {
    "domain alignment": {"loss.domain"},
    "orthogonal module": {"model.orthogonal", "loss.orth"},
    "expression & consistency between the two classifiers": {"loss.expression", "loss.consistency"},
    "image-branch supcon": {"loss.supcon"},
    "report contrast": {"loss.report"},
}
RUNGS = [
    "dual-clip",
    "ladder-domain",
    "ladder-orthogonal",
    "ladder-expression",
    "ladder-supcon",
    "align-clip",
]


def _rungs(**overrides: object) -> list[RunConfig]:
    return expand(load_matrix("ladder"), DEMO_BACKBONES, seeds=[0], overrides=overrides)


def _changed(a: RunConfig, b: RunConfig) -> dict[str, tuple[object, object]]:
    fa, fb = a.flat(), b.flat()
    return {
        k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if k != "cell" and fa.get(k) != fb.get(k)
    }


def test_each_rung_adds_exactly_one_part_to_the_one_before() -> None:
    rungs = _rungs()
    assert [r.cell for r in rungs] == RUNGS
    first = rungs[0]
    assert first.model.text is not None and first.model.aligner and first.model.output == "mean"
    on = {name for name, w in first.loss.weights.items() if w > 0}
    assert on == {"cls", "semantic"}  # the dual-branch cell as the lab trains it
    added = []
    for before, after in zip(rungs, rungs[1:], strict=False):
        diff = _changed(before, after)
        part = [name for name, keys in PARTS.items() if keys == set(diff)]
        assert len(part) == 1, (after.cell, sorted(diff))
        assert all(old in (0.0, False) and new not in (0.0, False) for old, new in diff.values()), diff
        added.append(part[0])
    assert added == list(PARTS)  # every part once, in the seed's order


def test_the_full_matrix_runs_the_ladder_once() -> None:
    """Runs are keyed by their config (cell name included): each rung is a full cell with the ladder's exact
    config, so `ablate --matrix full` runs the ladder without a second run of dual-clip or align-clip, and no two
    full cells differ by their name alone (that would be one model trained twice)."""
    full = load_matrix("full")
    runs = expand(full, DEMO_BACKBONES, seeds=[0])
    cells = {r.cell: r for r in runs}
    for rung in _rungs():
        assert cells[rung.cell].config_hash() == rung.config_hash(), rung.cell
    assert [f"{a} - {b}" for a, b in full.contrast_pairs()["ladder"]] == [
        f"{after} - {before}" for before, after in zip(RUNGS, RUNGS[1:], strict=False)
    ]
    unnamed = [r.model_copy(update={"cell": ""}).config_hash() for r in runs]
    assert len(set(unnamed)) == len(unnamed)


@pytest.fixture(scope="module")
def ran() -> dict[str, object]:
    from cxrfa.cell import run_cell

    # evaluate=False: fit only (the test split, its bootstrap and plots are the same code for every cell)
    return {
        cfg.cell: run_cell(cfg, None, progress=False, explore=(), evaluate=False) for cfg in _rungs(**SMOKE)
    }


def test_every_rung_runs_with_the_terms_it_switched_on(ran: dict[str, object]) -> None:
    terms_before: set[str] = set()
    for cell, result in ran.items():
        assert result.status == "FINISHED", (cell, result.reason)  # type: ignore[attr-defined]
        assert math.isfinite(result.metrics["val/best_macro_auc"])  # type: ignore[attr-defined]
        epoch = result.fit.history[0]  # type: ignore[attr-defined]
        terms = {k.removeprefix("train/loss_") for k in epoch if k.startswith("train/loss_")}
        on = {n for n, w in result.cfg.loss.weights.items() if w > 0}  # type: ignore[attr-defined]
        assert terms == on, (cell, terms, on)  # every term of the rung computed (reports: the demo has them)
        assert terms > terms_before or cell == RUNGS[0], cell
        assert all(f"train/chance_{t}" in epoch for t in terms - {"coral"})
        terms_before = terms
