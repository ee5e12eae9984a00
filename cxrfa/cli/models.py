"""``cxrfa models list`` and ``cxrfa pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfa.cli._common import DeviceOpt, below_chance, console, user_errors

models_app = typer.Typer(help="The encoder registry.", no_args_is_help=True)


@models_app.command("list")
@user_errors
def list_command() -> None:
    """List the registered encoders, their known architectures and whether they have a text tower."""
    from rich.console import Console
    from rich.table import Table

    from cxrfa.models.registry import list_encoders

    table = Table(title="encoders (BackboneConfig.name)")
    for col in ("name", "text tower", "architectures", "description"):
        table.add_column(col, overflow="fold")
    for info in list_encoders():
        table.add_row(info.name, "yes" if info.has_text else "no", "\n".join(info.archs), info.description)
    Console().print(table)


@user_errors
def pretrain_command(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Manifest CSV with image-report pairs (label sentences when it has none).",
            dir_okay=False,
        ),
    ],
    arch: Annotated[str, typer.Option("--arch", help="open_clip architecture, e.g. cxrfa-tiny-clip.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.", dir_okay=False)],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the train pairs.")] = 6,
    init: Annotated[str | None, typer.Option("--init", help="Start from a tag, file or folder.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 16,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """CLIP-pretrain an encoder on image-report pairs (train split); report val retrieval vs chance."""
    from cxrfa.pretrain import pretrain
    from cxrfa.train import resolve_device

    dev = str(resolve_device(device))
    result = pretrain(
        data, arch, out, epochs=epochs, init=init, batch_size=batch_size, lr=lr, seed=seed, device=dev
    )
    losses = " ".join(f"{v:.3f}" for v in result.losses)
    typer.echo(
        f"wrote {result.out} ({result.n_train} train pairs of images and {result.texts}, "
        f"{result.n_val} val, {result.n_test} test; {result.seconds:.1f} s)"
    )
    typer.echo(f"loss per epoch: {losses}")
    typer.echo(
        f"final loss {result.final_loss:.3f} (chance {result.chance_loss:.3f}: features that ignore the image; "
        f"floor {result.floor_loss:.3f}: perfect alignment)"
    )
    for split, auc, r1, c1, r5, c5 in (
        (
            "val",
            result.zeroshot_auc_val,
            result.recall_at_1,
            result.chance_at_1,
            result.recall_at_5,
            result.chance_at_5,
        ),
        (
            "test",
            result.zeroshot_auc_test,
            result.test_recall_at_1,
            result.test_chance_at_1,
            result.test_recall_at_5,
            result.test_chance_at_5,
        ),
    ):
        line = (
            f"{split}: zero-shot macro AUROC {auc:.3f} (chance 0.500); image->report R@1 {r1:.3f} "
            f"(chance {c1:.3f}), R@5 {r5:.3f} (chance {c5:.3f})"
        )
        if below_chance(line):  # a failed pretraining must not read like a routine line
            console.print(f"[yellow]{line}: below chance[/]", highlight=False)
        else:
            typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``pretrain`` to the cxrfa app."""
    app.add_typer(models_app, name="models")
    app.command("pretrain")(pretrain_command)
