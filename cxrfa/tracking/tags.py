"""Tag names: every tag cxrfa writes or reads on a run or an experiment is named here, nowhere else."""

from __future__ import annotations

from cxrfa.claims import OWNER

TAG_PREFIX = "cxrfa."
TAG_CELL = "cxrfa.cell"  # marks a cell run (what `compare` gathers)
TAG_SEED = "cxrfa.seed"
TAG_CONFIG_HASH = "cxrfa.config_hash"  # resume key of a cell run; trials carry a ".trial<N>" suffix
TAG_DATA_HASH = "cxrfa.data_hash"
TAG_DATA = "cxrfa.data"
TAG_BACKBONE_SOURCE = "cxrfa.backbone.source"
TAG_AXIS_PREFIX = "cxrfa.axis."
TAG_CODE_VERSION = "cxrfa.code_version"
TAG_FAILURE = "cxrfa.failure"
TAG_OWNER = OWNER  # host:pid:start of the process that runs (or ran) it
TAG_RESUMED_FROM = "cxrfa.resumed_from"
TAG_THREADS = "cxrfa.threads"  # torch CPU threads the run trained with
TAG_PARENT = "cxrfa.parent"  # name of a matrix invocation's parent run
TAG_MATRIX = "cxrfa.matrix"
TAG_CELLS = "cxrfa.cells"  # on an ablation parent: the matrix's cells in file order (JSON list)
TAG_CONTRASTS = "cxrfa.contrasts"  # on an ablation parent: the matrix's contrasts (JSON {family: ["a - b"]})
TAG_TUNING = "cxrfa.tuning"  # on an ablation parent: how its cells were tuned (set by study recipes)
TAG_TUNED_TRIALS = "cxrfa.tuned_trials."  # + cell: finished trials of the cell's study, or "none"
TAG_BACKBONES = "cxrfa.backbones"
TAG_STUDY = "cxrfa.study"
TAG_TRIAL = "cxrfa.trial"
TAG_TRIAL_STATE = "cxrfa.trial_state"
TAG_TRIAL_CONFIG_HASH = "cxrfa.trial_config_hash"
TAG_STUDY_PARENT = "cxrfa.study_parent"
TAG_TUNED_CELL = "cxrfa.tuned_cell"
TAG_STORAGE = "cxrfa.storage"
TAG_METRIC = "cxrfa.metric"
TAG_SAMPLER = "cxrfa.sampler"
TAG_PRUNER = "cxrfa.pruner"
TAG_BEST_TRIAL = "cxrfa.best_trial"
TAG_BEST_RUN = "cxrfa.best_run"
TAG_PRETRAIN = "cxrfa.pretrain"
TAG_PIPELINE = "cxrfa.pipeline"
MLFLOW_PARENT = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_NOTE = "mlflow.note.content"  # a run's (or experiment's) description in the UI
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # opens experiments in the model-training view, not the GenAI one
