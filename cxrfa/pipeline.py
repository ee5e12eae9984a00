"""Study recipes: one YAML file chains data -> pretrain -> tune -> ablate -> compare in one MLflow experiment.

A recipe (:class:`Recipe`, ``extra="forbid"``) names a matrix and the stages to run; :func:`run_pipeline` calls
the library entry points of each command in order. Every stage is skipped when its outputs already exist, so
re-running a recipe after an interruption continues where it stopped:

- data: the manifest file exists;
- pretrain: the checkpoint file exists;
- tune: per cell, the overlay exists and the study holds the requested finished trials (else the study resumes);
- ablate: every cell x seed already FINISHED (else only the missing runs are trained, as ``cxrfa ablate`` does);
- compare: the report exists and no run was added by this invocation.

Tuning is symmetric: the tune stage tunes every compared cell with the same budget (a recipe listing only some
is refused), the ablation uses tuned overlays for all its cells or for none, and the parent run records how the
cells were tuned (``cxrfa.tuning``, ``cxrfa.tuned_trials.<cell>``) for the comparison report.

Paths in a recipe are relative to the folder the command runs in (like every other cxrfa command).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrfa.config import AblationMatrix, BackboneSet, load_matrix, read_yaml, validate
from cxrfa.data.readers import get_reader
from cxrfa.errors import CxrfaError
from cxrfa.labels import Blank, Uncertain
from cxrfa.models.registry import load_backbones
from cxrfa.tracking import TAG_PARENT, TAG_PIPELINE, TAG_PRETRAIN, TAG_TUNED_TRIALS, TAG_TUNING, Tracker

log = logging.getLogger(__name__)


class _Stage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SynthStage(_Stage):
    """Generate the synthetic dataset (``cxrfa data synth``)."""

    out: str  # folder; the manifest is <out>/manifest.csv
    n: int = Field(2000, ge=20)
    size: int = Field(96, ge=32)
    seed: int = 0


class IndexStage(_Stage):
    """Index a dataset on disk (``cxrfa data index``)."""

    format: str  # a registered reader (``cxrfa data formats``)
    root: str  # dataset folder
    out: str  # manifest file to write
    csv: str | None = None
    label_set: str = "nih14"
    uncertain: Uncertain = "ignore"
    blank: Blank = "zero"
    frontal_only: bool = False
    split_seed: int = 0
    skip_bad: bool = False
    columns: dict[str, str] | None = None

    @field_validator("format")
    @classmethod
    def _registered(cls, value: str) -> str:
        try:
            get_reader(value)
        except CxrfaError as err:
            raise ValueError(str(err)) from None
        return value


class DataStage(_Stage):
    """Exactly one of ``synth`` or ``index``."""

    synth: SynthStage | None = None
    index: IndexStage | None = None

    @model_validator(mode="after")
    def _one(self) -> DataStage:
        if (self.synth is None) == (self.index is None):
            raise ValueError("give exactly one of data.synth or data.index")
        return self

    @property
    def manifest(self) -> Path:
        return Path(self.synth.out) / "manifest.csv" if self.synth is not None else Path(self.index.out)  # type: ignore[union-attr]


class PretrainStage(_Stage):
    """CLIP-pretrain a backbone on the data's image-report pairs (``cxrfa pretrain``); cells then use it."""

    # which entry of the recipe's backbone set gets the weights (checked before any stage)
    backbone: str = "clip"
    out: str  # checkpoint file
    arch: str | None = None  # default: the backbone set's architecture for that entry
    init: str | None = None  # start from these weights (open_clip tag or file); None = from scratch
    epochs: int = Field(5, ge=1)
    options: dict[str, Any] = Field(
        default_factory=dict
    )  # further keyword arguments of cxrfa.pretrain.pretrain


class TuneStage(_Stage):
    """Optuna study per cell (``cxrfa tune``); the best values become overlays the ablation uses.

    Every compared cell is tuned with the same budget (``trials`` each), so no cell's Δ comes from tuning alone.
    """

    cells: list[str] | None = None  # None = every cell the ablation runs; a list must include all of them
    trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    storage: str | None = None  # default: optuna.journal beside the tracking store
    timeout: float | None = None  # seconds per cell
    n_jobs: int = Field(1, ge=1)
    seed: int | None = None  # training seed of the trials (default: the matrix's first seed)
    sampler_seed: int | None = None
    overrides: dict[str, Any] = Field(
        default_factory=dict
    )  # dotted keys for the trials only (e.g. train.epochs)


class AblateStage(_Stage):
    """Every cell x seed of the matrix (``cxrfa ablate``), with the tuned overlays when ``tuned``."""

    cells: list[str] | None = None
    seeds: list[int] | None = None
    tuned: bool = True  # apply ablations/tuned/<matrix>/<cell>.yaml where they exist
    explore: list[str] = Field(default_factory=lambda: ["gap", "similarity"])
    overrides: dict[str, Any] = Field(default_factory=dict)


class CompareStage(_Stage):
    """The comparison report (``cxrfa compare``) of the ablation's parent run."""

    out: str = "out/compare"
    metric: str = "test/macro_auc"
    baseline: str | None = None
    n_boot: int = Field(1000, ge=0)


class Recipe(_Stage):
    """A whole study. ``data: null`` uses the built-in synthetic demo dataset."""

    name: str
    description: str = ""
    matrix: str  # ablations/NAME.yaml, a path, or a packaged matrix
    backbones: str = "demo"  # demo | real | a YAML file
    experiment: str | None = None  # MLflow experiment for every stage; default: the recipe name
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI or ./mlruns
    data: DataStage | None = None
    pretrain: PretrainStage | None = None
    tune: TuneStage | None = None
    ablate: AblateStage | None = Field(default_factory=AblateStage)
    compare: CompareStage | None = Field(default_factory=CompareStage)
    source: str | None = Field(None, exclude=True)

    def compared_cells(self, matrix: AblationMatrix) -> list[str]:
        """The cells the ablation runs and the report compares."""
        return list(self.ablate.cells if self.ablate and self.ablate.cells else matrix.cells)

    def tuned_cells(self, matrix: AblationMatrix) -> list[str]:
        """The cells the tune stage tunes: every compared cell (a recipe that leaves one out is refused).

        Raises:
            CxrfaError: ``tune.cells`` lists only some of the compared cells.
        """
        if self.tune is None:
            return []
        compared = self.compared_cells(matrix)
        if self.tune.cells is None:
            return compared
        missing = [c for c in compared if c not in {t.split("[", 1)[0] for t in self.tune.cells}]
        if missing:
            raise CxrfaError(
                f"{self.source or self.name}: tune.cells leaves out compared cell(s) {', '.join(missing)}; every "
                "compared cell gets the same tuning budget: list them all, omit tune.cells, or drop the tune stage"
            )
        return list(self.tune.cells)


@dataclass
class StageResult:
    """What one stage did: ``ran``, ``skipped`` or ``failed``."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class PipelineResult:
    recipe: str
    experiment: str
    stages: list[StageResult] = field(default_factory=list)
    ablation_parent: str | None = None
    report: Path | None = None

    @property
    def failed(self) -> list[StageResult]:
        return [s for s in self.stages if s.status == "failed"]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise CxrfaError(f"recipe {path}: no such file (see pipelines/*.yaml)")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise CxrfaError(f"{path}: a recipe must be a mapping with 'name' and 'matrix'")
    return validate(Recipe, {**raw, "source": str(path)}, str(path))


# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    recipe: Recipe
    matrix: AblationMatrix
    backbones: BackboneSet
    backbones_label: str
    tracker: Tracker
    manifest: Path | None
    progress: bool
    command: str
    changed: bool = False  # a stage of this invocation added runs/files that later stages depend on

    @property
    def data_overrides(self) -> dict[str, Any]:
        return {} if self.manifest is None else {"data.manifest": str(self.manifest.resolve())}


def run_pipeline(recipe: Recipe, progress: bool = True, command: str | None = None) -> PipelineResult:
    """Run every stage of a recipe in order, skipping those whose outputs exist.

    Args:
        recipe: the validated recipe.
        progress: show progress bars.
        command: the command line, recorded in tuned overlays.

    Returns:
        What each stage did, the ablation's parent run and the report path.

    Raises:
        CxrfaError: a bad recipe, matrix, data or store (stops the pipeline; finished stages stay done).
    """
    matrix = load_matrix(recipe.matrix)
    tuned = recipe.tuned_cells(matrix)  # before anything runs: a recipe that tunes only some cells is refused
    where = recipe.source or recipe.name
    tracker = Tracker(recipe.tracking_uri, recipe.experiment or recipe.name)
    ctx = _Context(
        recipe,
        matrix,
        load_backbones(recipe.backbones),
        recipe.backbones,
        tracker,
        recipe.data.manifest if recipe.data else None,
        progress,
        command or f"cxrfa pipeline run {where}",
    )
    if recipe.pretrain is not None and recipe.pretrain.backbone not in ctx.backbones.backbones:
        raise CxrfaError(
            f"{where}: pretrain.backbone {recipe.pretrain.backbone!r} is not in backbone set "
            f"{ctx.backbones.name!r}; known: {', '.join(ctx.backbones.backbones)}"
        )
    result = PipelineResult(recipe.name, tracker.experiment)
    stages: list[tuple[str, Callable[[_Context, PipelineResult], StageResult]]] = []
    if recipe.data is not None:
        stages.append(("data", _data))
    if recipe.pretrain is not None:
        stages.append(("pretrain", _pretrain))
    stages += [(f"tune {cell}", _tune_stage(cell)) for cell in tuned]
    if recipe.ablate is not None:
        stages.append(("ablate", _ablate))
    if recipe.compare is not None:
        stages.append(("compare", _compare))
    for name, stage in stages:
        started = time.monotonic()
        log.info("pipeline %s: stage %s", recipe.name, name)
        outcome = stage(ctx, result)
        outcome.name, outcome.seconds = name, time.monotonic() - started
        result.stages.append(outcome)
        log.info(
            "pipeline %s: %s %s%s",
            recipe.name,
            name,
            outcome.status,
            f" ({outcome.detail})" if outcome.detail else "",
        )
    return result


def _data(ctx: _Context, result: PipelineResult) -> StageResult:
    stage = ctx.recipe.data
    assert stage is not None and ctx.manifest is not None
    if ctx.manifest.is_file():
        return StageResult("data", "skipped", f"{ctx.manifest} exists")
    if stage.synth is not None:
        from cxrfa.data.synth import synthesize

        s = stage.synth
        synthesize(Path(s.out), s.n, s.size, s.seed, progress=ctx.progress)
    else:
        from cxrfa.data.indexing import index_dataset
        from cxrfa.data.manifest import write_manifest

        i = stage.index
        assert i is not None
        built = index_dataset(
            i.format,
            Path(i.root),
            Path(i.csv) if i.csv else None,
            i.label_set,
            i.uncertain,
            i.blank,
            i.frontal_only,
            i.split_seed,
            i.skip_bad,
            i.columns,
        )
        write_manifest(built.manifest, ctx.manifest)
    ctx.changed = True
    return StageResult("data", "ran", f"wrote {ctx.manifest}")


def _pretrain(ctx: _Context, result: PipelineResult) -> StageResult:
    stage = ctx.recipe.pretrain
    assert stage is not None
    out = Path(stage.out)
    base = ctx.backbones.backbones[stage.backbone]  # checked by run_pipeline before any stage
    status, detail = "skipped", f"{out} exists"
    if not out.is_file():
        from cxrfa.data.load import load_data
        from cxrfa.pretrain import pretrain

        data_cfg = _data_config(ctx)
        manifest = load_data(data_cfg, ctx.progress)
        trained = pretrain(
            manifest, stage.arch or base.arch, out, stage.epochs, init=stage.init, **stage.options
        )
        _log_pretrain(ctx, stage, trained)
        status, detail, ctx.changed = "ran", f"wrote {out}", True
    # Every later stage uses the pretrained weights for this backbone entry.
    entry = base.model_copy(update={"pretrained": str(out.resolve()), "arch": stage.arch or base.arch})
    ctx.backbones = BackboneSet(
        name=f"{ctx.backbones.name}+pretrain", backbones={**ctx.backbones.backbones, stage.backbone: entry}
    )
    ctx.backbones_label = f"{ctx.backbones_label}+pretrain:{out.name}"
    return StageResult("pretrain", status, detail)


def _data_config(ctx: _Context) -> Any:
    """The matrix's data section with the recipe's manifest applied (what every cell of the study reads)."""
    from cxrfa.config import DataConfig, deep_merge

    tree = deep_merge(
        ctx.matrix.base.get("data", {}) or {},
        {"manifest": str(ctx.manifest.resolve())} if ctx.manifest else {},
    )
    return validate(DataConfig, tree, f"{ctx.matrix.source}: base.data")


def _log_pretrain(ctx: _Context, stage: PretrainStage, trained: Any) -> None:
    """One MLflow run for the pretraining, so the study's experiment shows where its weights came from."""
    run = ctx.tracker.start(
        f"pretrain {stage.backbone}",
        {TAG_PRETRAIN: stage.backbone, TAG_PIPELINE: ctx.recipe.name},
    )
    run.log_params(
        {
            "arch": stage.arch or ctx.backbones.backbones[stage.backbone].arch,
            "epochs": stage.epochs,
            "init": stage.init or "scratch",
            "out": stage.out,
        }
    )
    numbers = {
        k: v for k, v in vars(trained).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for step, loss in enumerate(getattr(trained, "losses", []) or []):
        run.log_metrics({"pretrain/loss": float(loss)}, step=step)
    run.log_metrics({f"pretrain/{k}": float(v) for k, v in numbers.items()})
    run.finish()


def _tune_stage(cell: str) -> Callable[[_Context, PipelineResult], StageResult]:
    def stage(ctx: _Context, result: PipelineResult) -> StageResult:
        from cxrfa.tuning import TuneSettings, overlay_path, select_cell, study_progress, tune

        t = ctx.recipe.tune
        assert t is not None
        cfg = select_cell(ctx.matrix, ctx.backbones, cell, t.seed, {**ctx.data_overrides, **t.overrides})
        settings = TuneSettings(
            trials=t.trials,
            storage=t.storage,
            sampler=t.sampler,
            pruner=t.pruner,
            n_jobs=t.n_jobs,
            timeout=t.timeout,
            sampler_seed=t.sampler_seed,
            command=ctx.command,
            progress=ctx.progress,
        )
        overlay = overlay_path(ctx.matrix.name, cfg.cell)
        name = f"{ctx.matrix.name}.{cfg.cell}"
        done = study_progress(name, settings.storage, ctx.tracker)
        if overlay.is_file() and done >= t.trials:
            return StageResult("", "skipped", f"{done} trials finished; {overlay} exists")
        out = tune(ctx.matrix, cfg, ctx.tracker, settings)
        ctx.changed = ctx.changed or out.ran > 0
        if out.overlay is None:
            return StageResult("", "failed", f"no complete trial ({out.counts['FAIL']} failed)")
        return StageResult(
            "", "ran", f"{out.finished} trials; best {out.metric} {out.best_value:.4f} -> {out.overlay}"
        )

    return stage


def _ablate(ctx: _Context, result: PipelineResult) -> StageResult:
    from cxrfa.ablate import ablate, parent_name, plan
    from cxrfa.config import expand
    from cxrfa.tuning import apply_overlays

    a = ctx.recipe.ablate
    assert a is not None
    runs = expand(
        ctx.matrix,
        ctx.backbones,
        seeds=a.seeds,
        overrides={**ctx.data_overrides, **a.overrides},
        cells=a.cells,
    )
    tuning = _tuning(ctx, runs) if a.tuned else None
    if tuning is not None:
        runs = apply_overlays(ctx.matrix, runs)
    data_label = str(ctx.manifest) if ctx.manifest else None
    parent = ctx.tracker.search(
        f"tags.`{TAG_PARENT}` = '{parent_name(ctx.matrix, ctx.backbones_label, data_label)}'"
    )
    todo = [p for p in plan(runs, ctx.tracker) if p.finished_run is None]
    if not todo and parent:
        result.ablation_parent = parent[0].run_id
        _record_tuning(ctx, parent[0].run_id, runs, tuning)
        return StageResult("ablate", "skipped", f"all {len(runs)} runs finished (parent {parent[0].run_id})")
    summary = ablate(
        ctx.matrix,
        runs,
        ctx.tracker,
        backbones=ctx.backbones_label,
        data=data_label,
        explore=a.explore,
        progress=ctx.progress,
    )
    result.ablation_parent = summary.parent_id
    if summary.parent_id is not None:
        _record_tuning(ctx, summary.parent_id, runs, tuning)
    ctx.changed = True
    if summary.failed:
        return StageResult(
            "ablate",
            "failed",
            f"{len(summary.failed)} of {len(runs)} runs failed (parent {summary.parent_id})",
        )
    return StageResult("ablate", "ran", f"{len(runs)} runs (parent {summary.parent_id})")


def _tuning(ctx: _Context, runs: list[Any]) -> dict[str, int] | None:
    """Finished trials per compared cell when the ablation uses tuned overlays; None = no tuning.

    Overlays are used for all compared cells or for none: a cell with an overlay next to one without would be
    compared with a tuning advantage.

    Raises:
        CxrfaError: some compared cells have an overlay and others have none.
    """
    from cxrfa.tuning import overlay_path, study_progress

    cells = list(dict.fromkeys(c.cell.split("[", 1)[0] for c in runs))
    have = {c: overlay_path(ctx.matrix.name, c).is_file() for c in cells}
    if not any(have.values()):
        if ctx.recipe.tune is not None:
            raise CxrfaError(
                f"{ctx.recipe.source}: the tune stage wrote no overlay; see the tune stages above"
            )
        return None
    if not all(have.values()):
        missing = ", ".join(c for c, ok in have.items() if not ok)
        raise CxrfaError(
            f"{ctx.recipe.source}: ablate.tuned: no tuned overlay for {missing} while other cells have one; tune "
            f"every compared cell with the same budget (a tune stage without cells), or set ablate.tuned: false"
        )
    storage = ctx.recipe.tune.storage if ctx.recipe.tune else None
    return {c: study_progress(f"{ctx.matrix.name}.{c}", storage, ctx.tracker) for c in cells}


def _record_tuning(ctx: _Context, parent_id: str, runs: list[Any], tuning: dict[str, int] | None) -> None:
    """Say on the ablation's parent run how its cells were tuned (the comparison report quotes it)."""
    from cxrfa.tracking import TrackedRun

    cells = list(dict.fromkeys(c.cell.split("[", 1)[0] for c in runs))
    if tuning is None:
        tags = {
            TAG_TUNING: "none: every cell ran the matrix's values",
            **{TAG_TUNED_TRIALS + c: "none" for c in cells},
        }
    else:
        budgets = sorted(set(tuning.values()))
        space = ", ".join(ctx.matrix.tune.params) or "?"
        t = ctx.recipe.tune
        how = f"{t.sampler} sampler, {t.pruner} pruning, " if t else ""
        detail = f"({how}objective {ctx.matrix.tune.metric}; search space {space})"
        if len(budgets) == 1:
            summary = (
                f"every compared cell tuned with the same budget: {budgets[0]} finished Optuna trials each"
            )
        else:
            summary = (
                "UNEQUAL budgets: " + ", ".join(f"{c} {n}" for c, n in tuning.items()) + " finished trials"
            )
        tags = {
            TAG_TUNING: f"{summary} {detail}",
            **{TAG_TUNED_TRIALS + c: str(n) for c, n in tuning.items()},
        }
    TrackedRun(ctx.tracker, parent_id).set_tags(tags)


def _compare(ctx: _Context, result: PipelineResult) -> StageResult:
    from cxrfa.compare import compare, write_report

    c = ctx.recipe.compare
    assert c is not None
    out = Path(c.out)
    report = out / "comparison.md"
    if report.is_file() and not ctx.changed:
        result.report = report
        return StageResult("compare", "skipped", f"{report} exists")
    comp = compare(
        ctx.tracker, result.ablation_parent, c.metric, c.baseline, n_boot=c.n_boot, progress=ctx.progress
    )
    paths = write_report(comp, out, ctx.tracker)
    result.report = paths["md"]
    return StageResult("compare", "ran", f"wrote {paths['md']}")
