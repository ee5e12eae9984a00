"""Shared CLI plumbing: the options several commands take, one-line user errors with exit status 2,
logging above the progress bars, the console and the "next:" hints.

Style of every command module: commands are module-level functions decorated with :func:`user_errors`, a
command group is a module-level ``typer.Typer``, and the module's ``register(app)`` only attaches them. An
option that more than one command takes is declared here, once.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

if TYPE_CHECKING:
    from rich.text import Text

from cxrfa.errors import CxrfaError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="MLflow store: a folder (SQLite inside), sqlite:///…, http://host:port, postgresql://…. "
        "Default ./mlruns.",
    ),
]
MatrixOpt = Annotated[
    str,
    typer.Option("--matrix", "-m", help="Matrix name (ablations/NAME.yaml, a path, or a packaged matrix)."),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Manifest CSV (from `cxrfa data index`). Omit for the built-in synthetic demo.",
        dir_okay=False,
    ),
]
BackbonesOpt = Annotated[
    str,
    typer.Option(
        "--backbones", help="'demo' (stand-ins), 'real' (CLIP ViT-B-16/openai, BiomedCLIP) or a YAML file."
    ),
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="MLflow experiment (default: the matrix name).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
PortOpt = Annotated[
    int, typer.Option("--port", help="Port on 127.0.0.1, 1-65535 (0: pick a free one).", show_default=True)
]
NoCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-feature-cache", help="Encode images afresh: neither read nor write the feature cache."
    ),
]


LauncherOpt = Annotated[
    str,
    typer.Option(
        "--launcher",
        help="local: worker processes on this machine (--workers); slurm: one Slurm job array through "
        "submitit, one task per unit (needs shared stores: --tracking-uri, --storage).",
    ),
]
PartitionOpt = Annotated[str | None, typer.Option("--partition", help="Slurm: the partition to submit to.")]
GpusPerTaskOpt = Annotated[
    int | None, typer.Option("--gpus-per-task", min=0, help="Slurm: GPUs for each task.")
]
CpusPerTaskOpt = Annotated[
    int | None, typer.Option("--cpus-per-task", min=1, help="Slurm: CPU cores for each task.")
]
TimeOpt = Annotated[
    str,
    typer.Option(
        "--time",
        help="Slurm: time limit of each task (H:MM:SS, D-HH:MM:SS or minutes); a task stopped at it, or "
        "preempted, is requeued and resumes from its checkpoint.",
    ),
]
ArrayParallelismOpt = Annotated[
    int, typer.Option("--array-parallelism", min=1, help="Slurm: tasks of the array running at once.")
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait", help="Slurm: follow the tasks with a progress bar until every unit is final, then report."
    ),
]


def check_launcher(launcher: str, dry_run: bool) -> str:
    """``--launcher``, checked before anything is opened: with ``slurm`` (and not a dry run) a Slurm controller
    must answer, so a command with no cluster leaves one line and exit 2, nothing written or submitted.

    Raises:
        CxrfaError: an unknown launcher, or no Slurm reachable.
    """
    from cxrfa.launch import LAUNCHERS, check_slurm

    if launcher not in LAUNCHERS:
        raise CxrfaError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and not dry_run:
        check_slurm()
    return launcher


def slurm_options(
    launcher: str,
    partition: str | None,
    gpus_per_task: int | None,
    cpus_per_task: int | None,
    time: str,
    array_parallelism: int,
    tracker: Any,
) -> Any:
    """The :class:`cxrfa.launch.SlurmOptions` of ``--launcher slurm``, or None for ``--launcher local``; the
    tasks' logs go beside the store's worker logs (``<store side files>/slurm``).

    Raises:
        CxrfaError: an unknown launcher, or a ``--time`` sbatch would not take.
    """
    from cxrfa.cell import checkpoint_dir
    from cxrfa.launch import SlurmOptions, parse_time

    if check_launcher(launcher, dry_run=True) == "local":
        return None
    return SlurmOptions(
        partition=partition,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        time_min=parse_time(time),
        array_parallelism=array_parallelism,
        logs=checkpoint_dir(tracker).parent / "slurm",
    )


def user_errors(fn: F) -> F:
    """Decorate a command: a :class:`CxrfaError` prints ``error: <line>`` and exits 2; bugs still raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        _REPEATS.repeats.clear()  # a command reports its own repeated warnings, not those logged before it
        from cxrfa.signals import Terminated, exit_now, exit_status, reason, stop_signals_interrupt

        try:
            with stop_signals_interrupt():  # SIGTERM/SIGHUP stop a command the way Ctrl-C does
                return fn(*args, **kwargs)
        except KeyboardInterrupt as err:
            console.print(f"{reason(err)}; run the same command again to resume", highlight=False)
            if isinstance(err, Terminated):  # a signal from outside: cleanup done, exit without the teardown
                exit_now(exit_status(err))
            raise typer.Exit(exit_status(err)) from None
        except CxrfaError as err:
            _fail(one_line(str(err)), err.exit_code)
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            # a read-only store, a full disk: the user's environment, not a bug; name the file, no traceback
            where = f"{err.filename}: " if err.filename else ""
            _fail(f"{where}{err.strerror}; {_ENVIRONMENT_ERRNOS[err.errno]}", 2)
        finally:
            _REPEATS.report(console)

    return wrapper  # type: ignore[return-value]


_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "fix the permissions or choose a folder you can write",
    errno.EPERM: "fix the permissions or choose a folder you can write",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space within your disk quota",
}


def one_line(message: str) -> str:
    """The user's line of a :class:`CxrfaError` message.

    A DataLoader worker's error reaches the main process re-raised with the worker's traceback folded into the
    message; its last line is the original ``CxrfaError: <line>``.
    """
    if "\nOriginal Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split("CxrfaError: ", 1)[-1]


def _fail(line: str, code: int) -> NoReturn:
    from rich.text import Text

    from cxrfa.tracking import redact_text

    line = redact_text(line)  # a driver's message may quote a URL's secrets back
    # the line as plain text: brackets in a message (cell[axis=v]) are never read as markup
    console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _setup_logging() -> None:
    """cxrfa's log lines (and other libraries' warnings) through one handler that prints above the progress
    bars; repeated warnings shown once and counted when the command returns; lines naming scratch folders left
    out."""
    root = logging.getLogger("cxrfa")
    if any(isinstance(h, BarSafeHandler) for h in root.handlers):
        return
    from cxrfa.tracking import RedactingFilter

    handler = BarSafeHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.addFilter(RedactingFilter())  # secrets never reach a log line
    handler.addFilter(ScratchPathFilter())
    handler.addFilter(BelowChanceFilter())
    handler.addFilter(_REPEATS)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    # A library's bare logging.warning() would otherwise install a plain stderr handler on the root logger
    # (logging.basicConfig) whose lines land inside the bars ("WARNING:root:No pretrained weights loaded…").
    top = logging.getLogger()
    if not top.handlers:
        library = BarSafeHandler(console=console, show_path=False, show_time=False, markup=False)
        library.setLevel(logging.WARNING)
        library.addFilter(RedactingFilter())
        library.addFilter(_REPEATS)
        top.addHandler(library)


class BarSafeHandler(RichHandler):
    """A :class:`RichHandler` that prints above the live tqdm bars: it clears them, prints, and draws them again.

    Without it a log line starts where the bar's text ends (``…| 0/2 [00:00<?, ?run/s]INFO …``), or in the
    last column once the bar has been cleared with ``\\r``.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Print ``record`` between a clear and a redraw of every bar on the terminal."""
        from tqdm.auto import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)

    def render_message(self, record: logging.LogRecord, message: str) -> Text:
        """The message as rich text; yellow when :class:`BelowChanceFilter` flagged it."""
        text = super().render_message(record, message)
        if getattr(record, "below_chance", False):
            text.stylize("yellow")
        return text


class RepeatFilter(logging.Filter):
    """Let a warning through the first time; count its repeats (same logger, text and values).

    One run evaluates val every epoch and then test, so a data property ("label(s) with one class present")
    would otherwise be printed once per evaluation of every run. :meth:`report` prints the counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.repeats: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a warning (or worse) already shown."""
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.repeats:
            self.repeats[key] += 1
            return False
        self.repeats[key] = 0
        return True

    def report(self, out: Console) -> None:
        """One line per warning that repeated: how many more times, and its first words."""
        from rich.text import Text

        for (_, message), times in self.repeats.items():
            if times:
                short = message if len(message) <= 70 else message[:69] + "…"
                line = Text.assemble(("note:", "yellow"), f" warning repeated {times} more time(s): {short}")
                out.print(line, highlight=False, soft_wrap=True)  # plain text: a cell[axis=v] is no markup
        self.repeats.clear()


_REPEATS = RepeatFilter()  # one per process: a command's repeats are reported when it returns
# tempfile.TemporaryDirectory(prefix="cxrfa-" or "cxrfa-<what>-"): the prefix and 8 random characters
_SCRATCH = re.compile(
    re.escape(os.path.join(tempfile.gettempdir(), "")) + r"cxrfa-(?:[a-z]+-)?[a-z0-9_]{8}(?![\w-])"
)


class ScratchPathFilter(logging.Filter):
    """Leave out info lines that name a scratch folder (``<tmp>/cxrfa-…``): it is deleted once its files are
    logged to the run, so the path would point nowhere by the time anyone reads it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an info (or debug) line naming a scratch folder."""
        return record.levelno >= logging.WARNING or not _SCRATCH.search(record.getMessage())


# a score beside its chance level; a loss is not a score (below chance is where a loss should be)
_VERSUS_CHANCE = re.compile(r"(?<!loss )(-?\d+(?:\.\d+)?) \(chance (-?\d+(?:\.\d+)?)\)")


class BelowChanceFilter(logging.Filter):
    """Flag a line that reports a value below its chance level (``R@1 0.520 (chance 0.658)``): raised to a
    warning, marked "below chance" and shown in yellow, so it is not read past as routine progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True; marks the record when a ``value (chance c)`` pair has value < c."""
        if record.levelno < logging.WARNING and below_chance(record.getMessage()):
            record.msg, record.args = f"{record.getMessage()}: below chance", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.below_chance = True
        return True


def below_chance(text: str) -> bool:
    """Whether ``text`` reports some ``value (chance c)`` with value < c."""
    return any(float(v) < float(c) for v, c in _VERSUS_CHANCE.findall(text))


# -- "next:" hints ---------------------------------------------------------------------------------------


def command_line(*words: str, **options: object) -> str:
    """The command as a user would type it again: ``cxrfa <words> --opt value …`` shell-quoted (options
    that are None or False are left out; True is a bare flag)."""
    parts = ["cxrfa", *words]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def typed(value: str | None, envvar: str) -> str | None:
    """``value`` when the user typed it, None when it came from ``envvar`` (which the user's shell still holds
    when they paste a hint) or was not given."""
    return value if value and value != os.environ.get(envvar) else None


def store_options(tracking_uri: str | None, experiment: str | None = None) -> dict[str, str | None]:
    """The options that point a follow-up command at the same store: ``--tracking-uri`` when it was typed
    (credentials hidden; they belong in ``MLFLOW_TRACKING_URI``) and ``--experiment`` when given."""
    from cxrfa.tracking import redact

    uri = typed(tracking_uri, "MLFLOW_TRACKING_URI")
    uri = redact(uri) if uri else None
    return {"experiment": experiment, "tracking_uri": uri}


def print_next(*commands: str) -> None:
    """One ``next:`` line with each command in bold, whole (never wrapped), for pasting."""
    from rich.text import Text

    line = Text("next: ")
    for i, cmd in enumerate(commands):
        line.append("   or   " if i else "").append(cmd, style="bold")
    console.print(line, soft_wrap=True, highlight=False)
