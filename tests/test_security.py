"""Safe by construction: no pickle is executed from a store, broken checkpoints never block a cell, bad
settings and unusable stores fail in one line before any run, missing weights fail the whole command fast."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.config import DEMO_BACKBONES, RunConfig, expand, load_matrix
from cxrfa.safeload import CorruptCheckpoint, UnsafeCheckpoint, load_resume_state, load_state
from cxrfa.tracking import Tracker

runner = CliRunner()


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _crafted(path: Path, marker: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":  # what torch.save writes: a zip whose data.pkl holds the payload
        torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def _store(experiment: str) -> Tracker:
    """The local store, created before the command (MLflow logs the creation of a new one)."""
    return Tracker(None, experiment)


def _smoke_hash(cell: str) -> str:
    (cfg,) = expand(load_matrix("smoke"), DEMO_BACKBONES, seeds=[0], cells=[cell])
    return cfg.config_hash()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_crafted_file_runs_code_with_plain_torch_load_but_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "ckpt.pt", marker, kind)
    if kind == "torch":  # the payload is real: the old loader ran it
        torch.load(path, weights_only=False)
        assert marker.read_text() == "ran"
        marker.unlink()
    with pytest.raises(
        UnsafeCheckpoint, match=rf"^{path}: refused to load: it is not a tensors-only checkpoint"
    ):
        load_state(path)
    with pytest.raises(UnsafeCheckpoint):  # a resume checkpoint too: refused, and left where it is
        load_resume_state(path)
    assert path.is_file() and not marker.exists()


def test_a_corrupt_resume_checkpoint_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "abc.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 0}, path)
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(CorruptCheckpoint, match=rf"^{path}: corrupt or truncated checkpoint .*; delete it"):
        load_state(path, fix="delete it")
    with caplog.at_level(logging.WARNING, logger="cxrfa.safeload"):
        assert load_resume_state(path, keys=("model",)) is None
    assert not path.exists() and (tmp_path / "abc.pt.corrupt").is_file()
    assert f"moved it to {tmp_path / 'abc.pt.corrupt'}" in caplog.text
    torch.save({"epoch": 3}, path)  # loads, but is not a training checkpoint
    assert load_resume_state(path, keys=("model", "epoch")) is None and not path.exists()
    torch.save({"model": {}, "epoch": 3}, path)
    assert load_resume_state(path, keys=("model", "epoch")) == {"model": {}, "epoch": 3}


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_crafted_checkpoint_in_the_store_stops_the_command_before_any_run(
    workdir: Path, command: str
) -> None:
    marker = workdir / "marker"
    planted = _crafted(
        workdir / "mlruns" / "checkpoints" / f"{_smoke_hash('align-clip')}.pt", marker, "torch"
    )
    store = _store("smoke")
    args = (
        ["train", "--matrix", "smoke", "--cell", "align-clip"]
        if command == "train"
        else ["ablate", "-m", "smoke"]
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: {planted}: refused to load") and "could run code" in line
    assert not marker.exists() and planted.is_file()
    assert store.search("") == []  # no run, not even a parent


def test_crafted_run_artifact_is_refused(workdir: Path) -> None:
    """A checkpoint/model.pt uploaded to a shared server is never unpickled by `explore --run`."""
    cfg = RunConfig.model_validate(
        {
            "cell": "cnn",
            "data": {"demo_n": 24, "demo_size": 32},
            "model": {
                "visual": {"name": "custom", "arch": "cxrfa-cnn-small", "frozen": False},
                "width": 16,
                "heads": 2,
            },
        }
    )
    tracker = _store("shared")
    run = tracker.start("cnn/seed=0", {"cxrfa.cell": "cnn"})
    (workdir / "config.json").write_text(cfg.model_dump_json())
    run.log_artifact(workdir / "config.json")
    marker = workdir / "marker"
    run.log_artifact(_crafted(workdir / "upload" / "model.pt", marker, "torch"), "checkpoint")
    run.finish()
    result = runner.invoke(app, ["explore", "gap", "--run", run.run_id, "--out", str(workdir / "gap")])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in _error_lines(result.output) if not ln.startswith(("INFO ", " "))]  # demo data log
    assert f"run {run.run_id} artifact checkpoint/model.pt: refused to load" in line
    assert not marker.exists()


def test_corrupt_checkpoint_never_blocks_its_cell(workdir: Path) -> None:
    ckpt = workdir / "mlruns" / "checkpoints" / f"{_smoke_hash('visual-clip')}.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(4096)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:-700])  # a copy cut short
    result = runner.invoke(app, ["train", "--matrix", "smoke", "--cell", "visual-clip"])
    assert result.exit_code == 0, result.output
    said = " ".join(
        result.output.split()
    )  # the log line wraps at the console's width, wherever its path ends
    assert "corrupt or truncated checkpoint" in said and "restarting this run from epoch 0" in said, said
    assert ckpt.with_name(ckpt.name + ".corrupt").is_file()
    (run,) = Tracker(None, "smoke").search("")
    assert run.status == "FINISHED"


def test_missing_real_weights_fail_the_whole_ablation_fast(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(workdir / "user"))  # no ~/.cache/clip
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(workdir / "hf-cache"))  # an empty HF cache
    started = time.monotonic()
    result = runner.invoke(app, ["ablate", "--matrix", "visual-only", "--backbones", "real"])
    assert time.monotonic() - started < 15
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith("error: weights ViT-B-16/openai") and "not available offline" in line
    assert not (workdir / "mlruns").exists()  # failed before the store was opened: no run, no parent


def test_missing_custom_weights_fail_before_any_run(workdir: Path) -> None:
    backbones = workdir / "bb.yaml"
    backbones.write_text(
        "clip: {name: custom, arch: cxrfa-cnn-small, frozen: false, pretrained: missing/cnn.pt}\n"
        "custom: {name: custom, arch: cxrfa-cnn-small, frozen: false}\n"
    )
    result = runner.invoke(
        app, ["ablate", "-m", "smoke", "--cells", "visual-clip", "--backbones", str(backbones)]
    )
    assert result.exit_code == 2, result.output
    assert _error_lines(result.output) == [
        "error: custom CNN weights missing/cnn.pt not found; give a state_dict file or pretrained=null"
    ]
    assert not (workdir / "mlruns").exists()  # failed before the store was opened: no run, no parent


@pytest.mark.parametrize("seeds", [",", " , ,", "0,0"])
def test_seeds_that_select_nothing_are_an_error(workdir: Path, seeds: str) -> None:
    result = runner.invoke(app, ["ablate", "-m", "smoke", "--seeds", seeds])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: --seeds {seeds!r}: ")
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize(("key", "value"), [("lr", ".inf"), ("lr", ".nan"), ("weight_decay", "-.inf")])
def test_non_finite_numbers_fail_validation_naming_the_key(workdir: Path, key: str, value: str) -> None:
    matrix = workdir / "bad.yaml"
    matrix.write_text(
        (Path("ablations") / "smoke.yaml").read_text().replace("lr: 0.003", f"lr: 0.003, {key}: {value}")
        if key != "lr"
        else (Path("ablations") / "smoke.yaml").read_text().replace("lr: 0.003", f"lr: {value}")
    )
    result = runner.invoke(app, ["ablate", "-m", str(matrix), "--dry-run"])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line == f"error: {matrix}: cell 'visual-clip': train.{key}: Input should be a finite number"


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("sqlite:////proc/mlflow.db", "error: tracking store /proc is read-only ("),
        ("/proc/sub/mlruns", "error: tracking store /proc/sub/mlruns: cannot create the folder ("),
    ],
)
def test_unwritable_store_is_one_line_without_retries(workdir: Path, uri: str, needle: str) -> None:
    """/proc refuses new files even to root: MLflow alone retried for ~100 s, then printed 37 lines."""
    started = time.monotonic()
    result = runner.invoke(app, ["ablate", "-m", "smoke", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(needle)
    assert time.monotonic() - started < 10


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="root writes through chmod",
)
def test_chmod_555_store_is_one_line(workdir: Path) -> None:
    runner.invoke(app, ["ablate", "-m", "smoke", "--dry-run"])  # creates ./mlruns
    store = workdir / "mlruns"
    store.chmod(0o555)
    try:
        result = runner.invoke(app, ["ablate", "-m", "smoke"])
    finally:
        store.chmod(0o755)
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: tracking store {store.resolve()} is read-only")


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_unsafe_open_clip_weights_fail_before_any_run(workdir: Path, kind: str) -> None:
    weights = _crafted(workdir / "w" / "clip.pt", workdir / "ran", kind)
    backbones = workdir / "bb.yaml"
    backbones.write_text(f"clip: {{name: clip, arch: cxrfa-tiny-clip, pretrained: {weights}}}\n")
    result = runner.invoke(
        app, ["ablate", "-m", "smoke", "--cells", "visual-clip", "--backbones", str(backbones)]
    )
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: {weights}: refused to load"), line
    assert not (workdir / "ran").exists()  # never unpickled
    assert not (workdir / "mlruns").exists()  # refused before the store was opened: no run, no parent


def test_a_long_refusal_reason_is_cut_at_a_word() -> None:
    from cxrfa.safeload import _detail

    reason = "Weights only load failed. " + "Re-running `torch.load` from a trusted source may help. " * 4
    shown = _detail(RuntimeError(reason))
    assert shown.endswith(" …") and len(shown) <= 122
    assert reason.startswith(shown.removesuffix(" …")) and reason[len(shown) - 2] == " "  # whole words only
