"""What several test modules build the same way: command lines (of `cxrfa` in-process or in a fresh process,
and of other `python -m` servers), processes whose output is read as text, and tiny alignment heads."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cxrfa.models.alignment import AlignmentModel


def cli_args(*args: object, **options: object) -> list[str]:
    """``[*args, "--name", "value", …]`` as strings, for a command line.

    An option's underscores become dashes (``tracking_uri=…`` -> ``--tracking-uri …``); ``True`` is a bare flag
    (``worker=True`` -> ``--worker``); every other value is passed as ``str(value)``, ``""`` included.
    """
    out = [str(arg) for arg in args]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def python_m(module: str, *args: object, **options: object) -> list[str]:
    """``python -m module …`` with this interpreter (arguments and options as :func:`cli_args` writes them)."""
    return [sys.executable, "-m", module, *cli_args(*args, **options)]


def cxrfa_cmd(*args: object, **options: object) -> list[str]:
    """The command line of ``cxrfa …`` in a fresh process (arguments and options as :func:`cli_args`)."""
    return python_m("cxrfa.cli", *args, **options)


def metric_steps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged (step, value) of one metric of a run, in logging order, read with MLflow's own client (cxrfa
    itself reads only a run's latest values)."""
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


# smoke-sized overrides of a shipped matrix: a small demo set, narrow heads, one epoch
SMOKE = {
    "data.demo_n": 240,
    "data.demo_size": 64,
    "model.width": 32,
    "model.heads": 2,
    "train.epochs": 1,
    "train.batch_size": 32,
}


def start_text(cmd: list[str], **popen: Any) -> subprocess.Popen[str]:
    """Start ``cmd`` with stdout and stderr together, read from ``.stdout`` as text."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def tiny_heads(
    labels: int, tokens: int, dim: int, output: str = "mean", report: bool = False, text_proj: str = "fixed"
) -> AlignmentModel:
    """Alignment heads with the text branch (width 32, 2 heads, one transformer2 layer, aligner, no dropout)
    on ``tokens`` visual tokens of size ``dim``, with random (labels, 12) label-text embeddings drawn from the
    global torch generator; ``report`` builds the image projection of the report term, ``text_proj`` picks the
    text map (``free``: a trainable projection)."""
    from cxrfa.config import BackboneConfig, ModelConfig
    from cxrfa.models.alignment import AlignmentModel

    clip = BackboneConfig(name="clip", arch="x")
    cfg = ModelConfig(
        visual=clip,
        text=clip,
        width=32,
        heads=2,
        t2_layers=1,
        aligner=True,
        output=output,
        dropout=0.0,
        text_proj=text_proj,
    )
    return AlignmentModel(cfg, dim, tokens, torch.randn(labels, 12), labels, report=report)
