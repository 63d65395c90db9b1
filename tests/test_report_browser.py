"""The HTML report opened in headless Chromium: it renders its charts, leaderboard and verdict table,
the search works, and injected script in an answer never runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from test_report import make_run_db

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (run .ci/install-browser)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="pollux-chromium-")
    try:
        return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str) -> str:
    result = chromium("--virtual-time-budget=5000", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pollux.report import build_report

    tmp = tmp_path_factory.mktemp("report")
    return build_report(make_run_db(tmp / "run.db"), tmp / "out").html


def test_report_renders_charts_and_tables(report: Path):
    dom = dump_dom(report.as_uri())
    assert 'data-ready="1"' in dom, "the page script did not finish"
    assert "<title>POLLUX report — run 1</title>" in dom  # the injected script did not rename the page
    assert len(re.findall(r'<svg class="chart ', dom)) == 4
    heat_cells = re.findall(r'<rect class="cell"', dom)
    assert len(heat_cells) == 2 * 2  # 2 averaged criteria × 2 models
    assert len(re.findall(r'<rect class="bar"', dom)) > 2
    assert dom.count('<table class="criterion-table"') == 2  # per model: criterion × task group
    board = dom.split('id="leaderboard-table"')[1].split("</table>")[0]
    assert board.count("<tr>") == 3 and "alpha" in board and "beta" in board
    # the verdict rows are built by the page's JS from the embedded data
    assert len(re.findall(r'<tr class="item"', dom)) == 36
    assert "showing 36 of 36 matching verdicts" in dom
    # the injected answer is shown as text, not as markup
    assert "<img src=" not in dom
    assert "&lt;/script&gt;&lt;img src=x" not in dom  # answers only appear in expanded details…
    assert "\\u003c/script\\u003e" in report.read_text(encoding="utf-8")  # …and escaped in the data block


def test_search_filters_verdicts(report: Path):
    dom = dump_dom(report.as_uri() + "#q=уникальноесловоbeta3")
    assert 'data-matches="3"' in dom
    assert len(re.findall(r'<tr class="item"', dom)) == 3
    dom = dump_dom(report.as_uri() + "#model=alpha")
    assert 'data-matches="18"' in dom
    dom = dump_dom(report.as_uri() + "#q=pwned")  # the injected answer is searchable as text
    assert 'data-matches="3"' in dom


def test_screenshot_is_not_blank(report: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    result = chromium("--window-size=1280,2000", f"--screenshot={shot}", report.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.stat().st_size > 30_000  # a blank page compresses to a few KB
