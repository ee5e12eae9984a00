"""One CLI behaviour everywhere: switches take no value, report folders default under ./out, --device auto,
ports checked in one line, and every "next:" hint points at the store the command used — pasted, it works."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.cli._common import command_line, store_options

runner = CliRunner()


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out |= _commands(cmd, f"{prefix}{name} ")
        else:
            out[f"{prefix}{name}"] = cmd
    return out


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def _options(flag: str) -> dict[str, Any]:
    return {name: p for name, cmd in COMMANDS.items() for p in cmd.params if flag in getattr(p, "opts", ())}


def test_switches_show_no_value_and_take_none() -> None:
    ctx = typer.main.get_command(app).make_context("cxrfa", ["ablate", "--help"], resilient_parsing=True)
    switches = {
        (name, p.opts[0])
        for name, cmd in COMMANDS.items()
        for p in cmd.params
        if getattr(p, "is_flag", False)
    }
    assert {("ablate", "--dry-run"), ("ablate", "--tuned"), ("data index", "--frontal-only")} <= switches
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if getattr(p, "is_flag", False):
                assert p.display_type_rich(ctx) is None, (
                    name,
                    p.opts,
                )  # no "<bool>" beside the flag in --help
    help_text = runner.invoke(app, ["ablate", "--help"], terminal_width=200).output
    assert "--dry-run" in help_text and "<bool>" not in help_text
    wrong = runner.invoke(app, ["ablate", "--matrix", "smoke", "--dry-run", "true"])
    assert wrong.exit_code == 2  # a switch takes no value: "true" is an unexpected argument


def test_device_is_auto_everywhere() -> None:
    devices = _options("--device")
    assert {"pretrain", "explore gap", "explore zeroshot"} <= set(devices)
    assert {name: p.default for name, p in devices.items()} == dict.fromkeys(devices, "auto")


def test_report_folders_default_under_the_current_folder() -> None:
    outs = {
        name: p
        for name, p in _options("--out").items()
        if not name.startswith("data ") and name != "pretrain"
    }
    assert {
        "evaluate",
        "compare",
        "explore gap",
        "explore umap",
        "explore similarity",
        "explore zeroshot",
    } <= set(outs)
    for name, p in outs.items():
        default = Path(p.default)
        assert not p.required and not default.is_absolute() and default.parts[0] == "out", (name, p.default)


@pytest.mark.parametrize("command", [["ui"], ["dashboard"]])
@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_outside_its_range_is_one_line(command: list[str], port: str, tmp_path: Path) -> None:
    res = runner.invoke(app, [*command, "--port", port, "--tracking-uri", str(tmp_path / "nowhere")])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert f"--port {port}" in errors[0] and "1 to 65535" in errors[0]
    assert not (tmp_path / "nowhere").exists()


def test_hints_repeat_a_typed_store_and_hide_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = store_options("sqlite:////data/runs/smoke.db", "smoke")
    assert command_line("compare", **store) == (
        "cxrfa compare --experiment smoke --tracking-uri sqlite:////data/runs/smoke.db"
    )
    secret = store_options("postgresql://me:hunter22@db/mlflow")["tracking_uri"]
    assert secret == "postgresql://***@db/mlflow"
    # from the environment: the shell that pastes the hint still has it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////data/runs/smoke.db")
    assert command_line("ui", **store_options("sqlite:////data/runs/smoke.db")) == "cxrfa ui"
    assert command_line("x", path="a b", flag=True, off=False, none=None) == "cxrfa x --path 'a b' --flag"


def test_the_train_hint_pasted_elsewhere_reads_the_same_store(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path_factory.mktemp("runs") / "smoke.db"
    res = runner.invoke(
        app,
        ["train", "--matrix", "smoke", "--cell", "visual-clip", "--tracking-uri", f"sqlite:///{db}"],
        terminal_width=400,
    )
    assert res.exit_code == 0, res.output
    (hint,) = [line for line in res.output.splitlines() if line.startswith("next: ")]
    first, ui = hint.removeprefix("next: ").split("   or   ")
    assert ui == f"cxrfa ui --tracking-uri sqlite:///{db}"
    # the side files sit in one folder beside the database, not among the user's files
    assert sorted(p.name for p in db.parent.iterdir()) == ["smoke.cxrfa", "smoke.db"]
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    words = shlex.split(first)
    assert words[:2] == ["cxrfa", "evaluate"]
    pasted = runner.invoke(app, words[1:])
    assert pasted.exit_code == 0, pasted.output
    assert (elsewhere / "out" / "evaluate" / "metrics.json").is_file()
    assert not (elsewhere / "mlruns").exists()  # read from the hint's store, no empty ./mlruns made
