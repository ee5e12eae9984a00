"""What the terminal shows while a command runs: log lines above the progress bars, never inside them; a
repeated warning once, with a count; no path to a deleted scratch folder; below-chance values in yellow."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from rich.console import Console
from tqdm.auto import tqdm

from cxrfa.cli._common import (
    BarSafeHandler,
    BelowChanceFilter,
    RepeatFilter,
    ScratchPathFilter,
    below_chance,
)

# A log line's level as the handler prints it, at the start of a line (rich pads it to 8 columns).
LEVEL = re.compile(r"(INFO|WARNING|ERROR) {2,}")
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


def broken_lines(stream: str) -> list[str]:
    """Log lines that do not start at column 0 of the terminal: a level word that follows other text on its
    line (a bar's ``…?run/s]INFO``), cursor moves and colours ignored."""
    text = CSI.sub("", stream)
    return [
        text[max(0, m.start() - 40) : m.end() + 20]
        for m in LEVEL.finditer(text)
        if m.start() > 0 and text[m.start() - 1] not in "\r\n"
    ]


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (handlers added by the test are removed after it)."""
    log = logging.getLogger("cxrfa.test_terminal")
    log.propagate, log.level = False, logging.INFO
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


def test_a_log_line_is_printed_above_a_live_bar_which_is_drawn_again(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)  # here, not in a fixture: pytest sets its own at each phase
    console = Console(file=err, force_terminal=True, width=100)
    logger.addHandler(BarSafeHandler(console=console, show_path=False, show_time=False, markup=False))
    bar = tqdm(total=4, desc="ablate smoke", file=sys.stderr, ncols=80, mininterval=0)
    bar.update(1)
    logger.info("visual-clip/seed=0: running")
    bar.update(1)
    bar.close()
    out = err.getvalue()
    # the bar was on screen when the line came, was cleared first, and came back after it
    before, after = CSI.sub("", out).split("INFO", 1)
    assert "ablate smoke" in before and before.endswith("\r") and "ablate smoke" in after
    assert broken_lines(out) == []
    # the check itself sees the breakage the handler prevents
    assert broken_lines("ablate smoke:  25%|##  | 1/4 [00:00<?, ?run/s]INFO     running\n")


def test_log_lines_under_a_real_terminal_start_at_column_0() -> None:
    """The same through a pseudo-terminal (``script``), with cxrfa's own logging set-up and nested bars."""
    if shutil.which("script") is None:
        pytest.skip("needs util-linux script")
    program = (
        "import logging, time\n"
        "from tqdm.auto import tqdm\n"
        "from cxrfa.cli._common import _setup_logging\n"
        "_setup_logging()\n"
        "log = logging.getLogger('cxrfa.x')\n"
        "outer = tqdm(total=3, desc='ablate smoke', unit='run', dynamic_ncols=True)\n"
        "for run in range(3):\n"
        "    log.info('cell %d: running', run)\n"
        "    for _ in tqdm(range(3), desc='epochs', leave=False):\n"
        "        time.sleep(0.01)\n"
        "        log.warning('label(s) with one class present: Hernia (0+/25-)')\n"
        "    outer.update(1)\n"
        "outer.close()\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        typescript = os.path.join(tmp, "log")
        shell = f"stty cols 100 rows 30; {sys.executable} -c {_quote(program)}"
        subprocess.run(
            ["script", "-q", "-c", shell, typescript], capture_output=True, timeout=120, check=True
        )
        with open(typescript, encoding="utf-8", errors="replace") as handle:
            # the session itself, without script's header and footer lines (the header repeats the command)
            out = "".join(
                x for x in handle.readlines() if not x.startswith(("Script started", "Script done"))
            )
    assert out.count("running") == 3 and "ablate smoke" in out
    assert broken_lines(out) == []
    assert out.count("one class present") == 1  # the repeats are counted, not printed


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _record(level: int, msg: str, *args: object, name: str = "cxrfa.metrics") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_warning_is_shown_once_and_counted() -> None:
    repeats = RepeatFilter()
    warning = "label(s) with one class present, AUROC/AP undefined: %s"
    shown = [repeats.filter(_record(logging.WARNING, warning, "Hernia (0+/25-)")) for _ in range(3)]
    other = repeats.filter(_record(logging.WARNING, warning, "Mass (0+/48-)"))  # other values: shown
    info = [repeats.filter(_record(logging.INFO, "epoch 1")) for _ in range(2)]  # progress: never folded
    assert shown == [True, False, False] and other and info == [True, True]
    out = io.StringIO()
    repeats.report(Console(file=out, width=200))
    (line,) = out.getvalue().splitlines()
    assert "repeated 2 more time(s)" in line and "one class present" in line
    assert repeats.repeats == {}  # reported once; a next command starts counting afresh


def test_info_lines_naming_a_scratch_folder_are_left_out() -> None:
    scratch = os.path.join(tempfile.gettempdir(), "cxrfa-m08g7jud", "eval")
    drop = ScratchPathFilter()
    assert not drop.filter(_record(logging.INFO, "wrote evaluation to %s", scratch))
    assert drop.filter(_record(logging.INFO, "wrote evaluation to %s", "out/evaluate"))
    home = os.path.join(tempfile.gettempdir(), "cxrfa-test-home-ab12cd34", "demo")  # a folder that stays
    assert drop.filter(_record(logging.INFO, "generating the demo dataset in %s", home))
    compare = os.path.join(tempfile.gettempdir(), "cxrfa-compare-ab12cd34")
    assert not drop.filter(_record(logging.INFO, "fetched predictions into %s", compare))
    assert drop.filter(_record(logging.WARNING, "cannot read %s", scratch))  # a problem is always shown


def test_a_value_below_its_chance_level_is_a_yellow_warning() -> None:
    assert below_chance("val retrieval R@1 0.520 (chance 0.658), R@5 0.920 (chance 0.877)")
    assert not below_chance("val retrieval R@1 0.700 (chance 0.658), R@5 0.920 (chance 0.877)")
    assert not below_chance("stand-in cxrfa-tiny-clip: loss 3.343 (chance 4.154); test zero-shot AUROC 0.766")
    flag = BelowChanceFilter()
    low = _record(logging.INFO, "val retrieval R@1 %.3f (chance %.3f)", 0.52, 0.658)
    high = _record(logging.INFO, "val retrieval R@1 %.3f (chance %.3f)", 0.72, 0.658)
    assert flag.filter(low) and flag.filter(high)
    assert low.levelname == "WARNING" and low.getMessage().endswith("below chance")
    assert high.levelname == "INFO" and not getattr(high, "below_chance", False)
    out = io.StringIO()
    handler = BarSafeHandler(console=Console(file=out, force_terminal=True, width=200), show_time=False)
    text = handler.render_message(low, low.getMessage())
    assert any("yellow" in str(span.style) for span in text.spans)
