"""``ablate``: run every cell x seed of a matrix as child runs under one parent, resumably.

Resume rule: a child whose config hash already FINISHED in the experiment is skipped; a RUNNING one left by a
killed process is marked KILLED and re-run (continuing from its last epoch checkpoint). One failing cell never
stops the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cxrfa.config import AblationMatrix, RunConfig
from cxrfa.errors import CxrfaError
from cxrfa.experiment import CellResult, run_cell
from cxrfa.tracking import TAG_PREFIX, Tracker
from cxrfa.train import NonFiniteLoss

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    """One row of ``--dry-run``: a resolved config and, if it already finished, its run id."""

    cfg: RunConfig
    finished_run: str | None


@dataclass
class AblationSummary:
    matrix: str
    parent_id: str | None
    results: list[CellResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status not in ("FINISHED", "SKIPPED")]


def parent_name(matrix: AblationMatrix, backbones: str, data: str | None) -> str:
    """Name (and reuse key) of a matrix invocation's parent run."""
    return f"{matrix.name} [{backbones}{'' if data is None else ', ' + data}]"


def plan(runs: Sequence[RunConfig], tracker: Tracker) -> list[PlannedRun]:
    """Which runs are still to do."""
    out = []
    for cfg in runs:
        done = tracker.finished(cfg.config_hash())
        out.append(PlannedRun(cfg, done.run_id if done else None))
    return out


def ablate(
    matrix: AblationMatrix,
    runs: Sequence[RunConfig],
    tracker: Tracker,
    *,
    backbones: str,
    data: str | None,
    explore: Sequence[str] = ("gap", "similarity"),
    progress: bool = True,
) -> AblationSummary:
    """Run (or skip, when finished) every config under one parent run; never raises for a failing cell.

    Raises:
        KeyboardInterrupt: passed through after the current child and the parent are marked KILLED.
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    parent = tracker.parent(
        parent_name(matrix, backbones, data),
        {
            f"{TAG_PREFIX}matrix": matrix.name,
            f"{TAG_PREFIX}backbones": backbones,
            f"{TAG_PREFIX}data": data or "demo",
        },
    )
    parent.log_text(_matrix_text(matrix), "matrix.yaml")
    summary = AblationSummary(matrix.name, parent.run_id)
    bar = tqdm(
        plan(runs, tracker),
        desc=f"ablate {matrix.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for item in bar:
            cfg = item.cfg
            bar.set_postfix_str(f"{cfg.cell}/seed={cfg.seed}")
            if item.finished_run is not None:
                summary.results.append(
                    CellResult(cfg, "SKIPPED", item.finished_run, _metrics(tracker, item.finished_run))
                )
                continue
            summary.results.append(_run_one(cfg, tracker, parent.run_id, explore, progress))
    except KeyboardInterrupt:
        parent.client.set_terminated(parent.run_id, status="KILLED")
        raise
    summary.seconds = time.monotonic() - started
    parent.log_metrics({"cells_finished": sum(r.status in ("FINISHED", "SKIPPED") for r in summary.results),
                        "cells_failed": len(summary.failed), "wall_seconds": summary.seconds})  # fmt: skip
    if summary.failed:
        parent.fail(
            f"{len(summary.failed)} cell(s) failed: "
            + "; ".join(f"{r.cfg.cell}/seed={r.cfg.seed}" for r in summary.failed)
        )
    else:
        parent.finish()
    return summary


def _run_one(
    cfg: RunConfig, tracker: Tracker, parent_id: str, explore: Sequence[str], progress: bool
) -> CellResult:
    started = time.monotonic()
    try:
        return run_cell(cfg, tracker, parent_id=parent_id, explore=explore, progress=progress)
    except NonFiniteLoss as err:
        reason = err.reason
    except CxrfaError as err:
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - a bug in one cell must not stop the matrix; it is logged in full
        log.exception("cell %s/seed=%d failed", cfg.cell, cfg.seed)
        reason = f"{type(err).__name__}: {err}"
    failed = tracker.search(
        f"tags.`cxrfa.config_hash` = '{cfg.config_hash()}' and attributes.status = 'FAILED'"
    )
    log.error("cell %s/seed=%d failed: %s", cfg.cell, cfg.seed, reason)
    return CellResult(
        cfg, "FAILED", failed[0].run_id if failed else None, reason=reason, seconds=time.monotonic() - started
    )


def _metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    return {k: v for k, v in tracker.get(run_id).metrics.items() if k.startswith("test/")}


def _matrix_text(matrix: AblationMatrix) -> str:
    import yaml

    return yaml.safe_dump(matrix.model_dump(mode="json", exclude={"source"}), sort_keys=False)
