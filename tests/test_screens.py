"""What a person sees, in headless Chromium: the report's first screen holds the answers, and the link `cxrfa ui`
prints opens the runs grouped by cell and charts without empty sections. Skipped where Playwright or a
system Chromium is missing (CI installs both)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_compare import SKILL, _ablation
from test_compare import lab as compare_lab  # noqa: F401 - the fixture: a manifest of patients, the working folder
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.tracking import TAG_CELL, TAG_TRIAL, TrackedRun, Tracker

REPO = Path(__file__).resolve().parents[1]
# the screenshot script's browser and its way of opening MLflow's links: one way to look, for pictures and test
_spec = importlib.util.spec_from_file_location("screenshots", REPO / "docs" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(shots)  # type: ignore[union-attr]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')"
)
if shots.chromium() is None:
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow  # an ablation, its report, an MLflow UI server and a browser

CELLS = list(SKILL)  # visual-clip, dual-clip, align-clip
TRIAL = "align-clip/trial=0"
# as many contrasts as the full demo declares (12, in 5 families): its answers and their table share one screen
PAIRS = ["dual-clip - visual-clip", "align-clip - dual-clip", "align-clip - visual-clip"]
CONTRASTS = {"text": PAIRS, "alignment": PAIRS, "branch": PAIRS, "head": PAIRS[:2], "text map": PAIRS[:1]}
# Every place where a table header wraps to a new line inside a word: [header, its text up to the break].
WORD_BREAKS = r"""
() => {
  // each place where a table header's text wraps to a new line inside a word: [header, text before the break]
  const out = [];
  for (const th of document.querySelectorAll('th')) {
    const text = th.textContent;
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    let seen = '', lastTop = null, prev = '';
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
        const rect = range.getClientRects()[0];
        const ch = node.data[i];
        if (rect && ch.trim()) {
          if (lastTop !== null && rect.top > lastTop + 2 && !/[\s_\/]/.test(prev)) out.push([text, seen]);
          lastTop = rect.top;
        }
        prev = ch; seen += ch;
      }
    }
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = shots.launch(pw)
        yield browser
        browser.close()


@pytest.fixture
def store(compare_lab: Path) -> str:  # noqa: F811 - the fixture imported above
    """A finished ablation of three cells x two seeds with declared contrasts, experiment "full", each run with
    both headline metrics; beside it a tuning trial of one cell, which carries the cell's tag too."""
    tracker = Tracker(str(compare_lab / "store"), "full")
    _ablation(tracker, compare_lab / "manifest.csv", seeds=(0, 1), contrasts=CONTRASTS)
    for run in tracker.search(f"tags.`{TAG_CELL}` != ''"):
        TrackedRun(tracker, run.run_id).log_metrics({"test/map": run.metrics["test/macro_auc"] / 2})
    study = tracker.parent("tune full.align-clip")
    trial = tracker.start(TRIAL, {TAG_CELL: "align-clip", TAG_TRIAL: "0"}, study.run_id)
    trial.log_metrics({"val/macro_auc": 0.9})
    trial.finish()
    study.finish()
    return str(compare_lab / "store")


def _inside(box: dict[str, float] | None, viewport: dict[str, int]) -> bool:
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and (box["x"] + box["width"] <= viewport["width"] and box["y"] + box["height"] <= viewport["height"])
    )


def test_the_reports_first_screen_holds_every_contrast_sentence_and_its_table(
    browser: Any, store: str
) -> None:
    out = Path(store).parent / "report"
    res = CliRunner().invoke(
        app,
        [
            "compare",
            "--experiment",
            "full",
            "--tracking-uri",
            store,
            "--out",
            str(out),
            "--n-boot",
            "50",
            "--no-log",
        ],
    )
    assert res.exit_code == 0, res.output
    page = browser.new_page(viewport=shots.REPORT_VIEWPORT)
    page.goto((out / "comparison.html").as_uri())
    sentences = page.locator("ul.answers li")
    assert sentences.count() == sum(map(len, CONTRASTS.values())) == 12
    for i in range(sentences.count()):
        text = sentences.nth(i).inner_text()
        assert "Holm p = " in text and "smallest detectable" in text, text
        assert _inside(sentences.nth(i).bounding_box(), shots.REPORT_VIEWPORT), text  # seen without scrolling
    table = page.locator("table.result")
    assert _inside(table.bounding_box(), shots.REPORT_VIEWPORT)
    assert table.locator("tbody tr").count() == 12
    assert "align-clip − visual-clip" in table.inner_text()
    assert (
        page.evaluate(WORD_BREAKS) == []
    )  # a header wraps between words or after "_" and "/", never in a word
    # nothing wider than the screen: no column hides behind a horizontal scroll
    assert page.evaluate("() => document.documentElement.scrollWidth") <= shots.REPORT_VIEWPORT["width"]
    page.close()


def test_the_ui_links_open_the_runs_grouped_by_cell_and_only_charts_that_hold_bars(
    browser: Any, store: str
) -> None:
    with shots.mlflow_ui(store, "full") as (table, charts):
        page = shots.open_mlflow(browser, table, "text=Group: ")
        page.wait_for_function(f"() => document.body.innerText.split('Group: ').length > {len(CELLS)}")
        groups = shots.grouped_rows(page)
        assert sorted(groups.nth(i).inner_text().strip() for i in range(groups.count())) == sorted(
            f"Group: {c}" for c in CELLS
        )
        for cell in CELLS:  # each group holds the cell's seeds
            for seed in (0, 1):
                assert page.get_by_text(f"{cell}/seed={seed}", exact=True).is_visible()
        # only the ablation's cell runs: not the tuning trial that carries a cell tag, nor the parent runs
        assert page.get_by_text(TRIAL).count() == 0 and page.get_by_text("Additional runs").count() == 0
        for metric in ("test/macro_auc", "test/map"):  # the headline columns
            assert page.locator(f'[data-testid="sort-header-{metric}"]').is_visible()
        page.close()

        page = shots.open_mlflow(browser, charts, shots.CHART_CARD)
        sections = shots.chart_sections(page)
        assert sections and all(n > 0 for _, n in sections), sections  # no empty chart section
        # the headline charts only, not a section for every logged metric
        assert [title for title, _ in sections] == ["test"], sections
        card = page.locator(shots.CHART_CARD).first
        assert "test/macro_auc" in card.inner_text()
        for cell in CELLS:  # one bar per cell: the legend names the cells, not the runs
            assert card.get_by_text(cell, exact=True).count() >= 1, card.inner_text()
        page.close()
