"""Take the README's pictures in headless Chromium: the comparison report's first screen, the two MLflow links
`cxrfa ui` prints (runs grouped by cell; the chart view) and optuna-dashboard on a tuning study.

From a fresh demo store, in the repository root (one command; the tuning study is the dashboard's subject):

    cxrfa ablate --matrix full && cxrfa tune --matrix smoke --cell align-clip --trials 8 && python docs/screenshots.py

It needs Playwright (`pip install -e ".[screenshots]"`; part of `.[dev]`) and a system Chromium
(Debian: `apt-get install chromium`); `playwright install` is never needed.

Each picture is what a user gets from the printed link without clicking, except MLflow's assistant panel,
which MLflow opens by itself on a browser's first visit to a local server and a user closes once: it starts
closed here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPORT_VIEWPORT = {"width": 1400, "height": 900}  # the acceptance screen: the answer must be on it
UI_VIEWPORT = {"width": 1600, "height": 1000}
# Chromium, headless and quiet: without the background-networking flags it keeps trying to reach Google's
# services, which on a closed network floods it with connection attempts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 120_000  # a cold MLflow UI on a busy machine takes tens of seconds to draw its runs
# MLflow 3.17 opens its assistant panel on a browser's first visit to a local server; mark that visit as done.
NO_ASSISTANT = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
SECTION_HEADER = '[data-testid="experiment-view-compare-runs-section-header"]'


def cxrfa(*args: str) -> list[str]:
    """The command line of ``cxrfa …`` with this interpreter."""
    return [sys.executable, "-m", "cxrfa.cli", *args]


def chromium() -> str | None:
    """The system Chromium's path, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def launch(pw: Any) -> Any:  # playwright's Playwright -> Browser
    """Headless system Chromium (Playwright's own browser download is not used)."""
    path = chromium()
    if path is None:
        sys.exit("no Chromium found: install it (Debian: apt-get install chromium)")
    return pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def server(cmd: list[str], ready: Callable[[list[str]], bool]) -> Iterator[list[str]]:
    """Run ``cmd`` (a `cxrfa` server) until the block ends; yields its output lines once ``ready(lines)``, then
    keeps draining its output so a full pipe never stalls it.

    Raises:
        RuntimeError: the server ended, or was not ready within :data:`UI_TIMEOUT_MS` (its output is in the
            message).
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(UI_TIMEOUT_MS / 1000, _stop, (proc,))  # ends the wait below if never ready
    watchdog.start()
    try:
        lines: list[str] = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if ready(lines):
                break
        else:
            raise RuntimeError(f"`{' '.join(cmd[2:])}` was not ready:\n" + "\n".join(lines))
        watchdog.cancel()
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield lines
    finally:
        watchdog.cancel()
        _stop(proc)
        proc.wait(timeout=60)


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the server and every process it started


def mlflow_links(lines: list[str], experiment: str) -> tuple[str, str]:
    """The two links `cxrfa ui` printed for ``experiment``: the grouped runs and the chart view.

    Raises:
        LookupError: no links for that experiment (it holds no cell runs).
    """
    links = _links(lines, experiment)
    if len(links) != 2:
        raise LookupError(f"`cxrfa ui` printed no links for experiment {experiment!r}:\n" + "\n".join(lines))
    return links["table"], links["charts"]


def _links(lines: list[str], experiment: str) -> dict[str, str]:
    links: dict[str, str] = {}
    current = None
    for line in lines:
        if line.startswith("  ") and not line.startswith("    "):
            current = line.strip()  # an experiment's name; its two links follow
        elif current == experiment and ": http" in line:
            links["charts" if "one bar per cell" in line else "table"] = line.split(": ", 1)[1].strip()
    return links


@contextlib.contextmanager
def mlflow_ui(store: str, experiment: str) -> Iterator[tuple[str, str]]:
    """`cxrfa ui` on ``store`` (a free port) while the block runs; yields its two links for ``experiment``."""
    with server(
        cxrfa("ui", "--tracking-uri", store, "--port", "0"), lambda ls: "charts" in _links(ls, experiment)
    ) as lines:
        yield mlflow_links(lines, experiment)


def open_mlflow(browser: Any, link: str, ready: str) -> Any:  # -> playwright Page
    """A page on ``link``, returned once ``ready`` (a selector) is visible."""
    page = browser.new_page(viewport=UI_VIEWPORT)
    page.add_init_script(NO_ASSISTANT)
    page.goto(link)
    page.locator(ready).first.wait_for(timeout=UI_TIMEOUT_MS)
    return page


def grouped_rows(page: Any) -> Any:
    """The rows of the runs table that head a group (MLflow writes "Group: <tag value>")."""
    return page.get_by_text("Group: ", exact=False)


def chart_sections(page: Any) -> list[tuple[str, int]]:
    """Each chart section on the page: its title and how many charts it holds."""
    return page.eval_on_selector_all(
        SECTION_HEADER,
        f"""heads => heads.map(h => {{
            const item = h.closest('.du-bois-light-collapse-item') || h.parentElement.parentElement;
            return [h.innerText.split('\\n')[0].trim(),
                    item.querySelectorAll('{CHART_CARD}').length];
        }})""",
    )


def report(browser: Any, store: str, experiment: str, out: Path) -> Path:
    """The report `cxrfa compare` writes for ``experiment``, its first screen at 1,400 x 900."""
    with tempfile.TemporaryDirectory(prefix="cxrfa-shots-") as tmp:
        # --no-log: a picture leaves the store as it was
        compare = ["compare", "--experiment", experiment, "--tracking-uri", store, "--out", tmp, "--no-log"]
        # its output names the temporary folder, gone once the picture is taken: shown only when it fails
        done = subprocess.run(cxrfa(*compare), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            sys.exit(f"`cxrfa {' '.join(compare)}` failed:\n{done.stdout}")
        page = browser.new_page(viewport=REPORT_VIEWPORT)
        page.goto((Path(tmp) / "comparison.html").as_uri())
        page.screenshot(path=out / "report.png")
        page.close()
    return out / "report.png"


def mlflow(browser: Any, store: str, experiment: str, out: Path) -> list[Path]:
    """The grouped runs and the chart view, as the links `cxrfa ui` prints open them."""
    with mlflow_ui(store, experiment) as (table, charts):
        page = open_mlflow(browser, table, "text=Group: ")
        page.wait_for_timeout(2000)  # the metric columns fill in after the rows
        page.screenshot(path=out / "mlflow-cells.png")
        page.close()
        page = open_mlflow(browser, charts, CHART_CARD)
        page.wait_for_timeout(3000)  # the bars draw after their data arrives
        page.screenshot(path=out / "mlflow-chart-view.png")
        page.close()
    return [out / "mlflow-cells.png", out / "mlflow-chart-view.png"]


def dashboard(browser: Any, store: str, out: Path) -> Path:
    """optuna-dashboard (`cxrfa dashboard`) on the store's first tuning study: its optimisation history."""
    cmd = cxrfa("dashboard", "--tracking-uri", store, "--port", "0")
    with server(cmd, lambda ls: ls[-1].startswith("Optuna dashboard:")) as lines:
        url = lines[-1].split()[2]  # "Optuna dashboard: http://127.0.0.1:<port>   (studies in …)"
        page = browser.new_page(viewport=UI_VIEWPORT)
        page.goto(f"{url}/dashboard")
        study = page.locator("a[href*='/dashboard/studies/']").first
        study.wait_for(timeout=UI_TIMEOUT_MS)
        study.click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(3000)  # plotly draws after the study's trials arrive
        page.screenshot(path=out / "optuna-dashboard.png")
        page.close()
    return out / "optuna-dashboard.png"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="mlruns", help="tracking store of the finished ablation and study")
    parser.add_argument("--experiment", default="full", help="the ablation's experiment")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = launch(pw)
        print(report(browser, args.store, args.experiment, args.out))
        for path in mlflow(browser, args.store, args.experiment, args.out):
            print(path)
        print(dashboard(browser, args.store, args.out))
        browser.close()


if __name__ == "__main__":
    main()
