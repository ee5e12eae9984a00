"""One CLI style: an option several commands take is declared once, so it reads the same everywhere."""

from __future__ import annotations

from typing import Any

import typer.main

from cxrfa.cli import app


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer's own click types)
            out |= _commands(cmd, f"{prefix}{name} ")
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def test_shared_options_are_one_declaration() -> None:
    commands = _commands(typer.main.get_command(app))  # type: ignore[arg-type]
    assert {"train", "ablate", "tune", "compare", "evaluate", "explore gap", "data formats"} <= set(commands)
    for flag, at_least in (
        ("--tracking-uri", 8),
        ("--data", 7),
        ("--backbones", 7),
        ("--no-feature-cache", 5),
    ):
        seen = {
            name: (p.help, p.envvar, p.show_envvar)
            for name, cmd in commands.items()
            for p in cmd.params
            if p.param_type_name == "option"
            and flag in p.opts
            and p.help
            and "Manifest CSV with" not in p.help
        }
        assert len(seen) >= at_least, (flag, sorted(seen))
        assert len(set(seen.values())) == 1, (flag, seen)
    uri = next(p for p in commands["explore umap"].params if "--tracking-uri" in p.opts)
    assert uri.envvar == "MLFLOW_TRACKING_URI"
