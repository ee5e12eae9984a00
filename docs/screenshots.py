"""Take the README's screenshots from a finished ablation: the comparison report and MLflow's chart view.

    cxrfa ablate --matrix full                     # the demo (or any ablation) into ./mlruns
    pip install -e ".[screenshots]"                # Playwright; uses the system Chromium if there is one
    python docs/screenshots.py --store mlruns --experiment full --out docs/img

What each picture shows is what a user gets without clicking: the report at 1,400 px leads with Δ, CI and
Holm p; the chart link `cxrfa ui` prints opens the runs grouped by cell, one bar per cell. The script only sets
what the link cannot (the assistant panel closed, the chart filter narrowed to ``--metric``, one tall chart per
row) as a user would in the UI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPORT_WIDTH = 1400  # the acceptance width: the result must be readable without scrolling


def cxrfa(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxrfa.cli", *args]


def chromium() -> str | None:
    """A system Chromium, if any (Playwright's own download is used otherwise)."""
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(browser, store: str, experiment: str, out: Path) -> Path:  # noqa: ANN001 - playwright Browser
    with tempfile.TemporaryDirectory(prefix="cxrfa-shots-") as tmp:
        subprocess.run(
            cxrfa("compare", "--experiment", experiment, "--tracking-uri", store, "--out", tmp), check=True
        )
        page = browser.new_page(viewport={"width": REPORT_WIDTH, "height": 900})
        page.goto((Path(tmp) / "comparison.html").as_uri())
        page.screenshot(path=out / "report.png")
        page.close()
    return out / "report.png"


def chart_view(browser, store: str, experiment: str, metric: str, out: Path) -> Path:  # noqa: ANN001
    ui = subprocess.Popen(
        cxrfa("ui", "--tracking-uri", store, "--port", str(free_port())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        link, current = None, None
        for line in ui.stdout:  # type: ignore[union-attr]
            print(line, end="")
            if line.startswith("  ") and not line.startswith("    "):
                current = line.strip()  # an experiment's name; its two links follow
            elif current == experiment and line.strip().startswith("one bar per cell"):
                link = line.split(": ", 1)[1].strip()
                break
        if link is None:
            sys.exit(f"`cxrfa ui` printed no chart-view link for experiment {experiment!r}")
        # Keep reading: a full pipe would block the server's logging, and with it the page.
        threading.Thread(target=ui.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        experiment_id = link.split("/experiments/")[1].split("/")[0]
        key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")
        search = page.get_by_placeholder("Search metric charts")
        page.goto(link)
        search.wait_for()
        state = json.loads(page.evaluate(f"() => localStorage.getItem({json.dumps(key)})") or "{}")
        state.update(runsHiddenMode="SHOW_ALL", chartsSearchFilter=f"^{metric}$")  # a regular expression
        for section in state.get("compareRunSections") or []:  # one chart per row, tall enough for every bar
            section.update(columns=1, cardHeight=760)
        page.evaluate(f"s => localStorage.setItem({json.dumps(key)}, s)", json.dumps(state))
        page.reload()
        search.wait_for()
        page.wait_for_timeout(5000)  # the charts draw after their data arrives
        page.screenshot(path=out / "mlflow-chart-view.png")
        page.close()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    return out / "mlflow-chart-view.png"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="mlruns", help="tracking store of the finished ablation")
    parser.add_argument("--experiment", default="full")
    parser.add_argument("--metric", default="test/macro_auc")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        print(report(browser, args.store, args.experiment, args.out))
        print(chart_view(browser, args.store, args.experiment, args.metric, args.out))
        browser.close()


if __name__ == "__main__":
    main()
