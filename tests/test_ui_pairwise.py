"""The UI's "Side by side" page (issue 19 item 4): `pollux compare`'s verdicts in a run database,
read over HTTP — the summary table from the same `pollux.pairwise` function as the report, the
pairs that flip with position (instruction, both answers, both verdicts), hostile text escaped and
isolated for text direction, and the nav link only where there is something to show.

The store is real: `pollux compare` with a loopback judge that always answers "1" (every pair
flips) writes into a real run database (tests/test_report.py's), opened by a real Explorer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pollux import pairwise as pw
from pollux.report import build_report
from pollux.report.build import fmt_rate
from pollux.ui.app import create_ui_app
from pollux.ui.queries import Explorer
from test_pairwise import JudgeServer, compare, write_files
from test_report import make_run_db
from test_ui_pages import RLO, unisolated

XSS = "<script>alert('x')</script>"
RECORDS = [("q1", f"Сколько будет 2+2? {XSS}", f"4 {RLO}ответ", f"5 {XSS}"),
           (f"q{RLO}2", "Столица Франции?", "Париж", "Лион")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path, Path]]:
    folder = tmp_path_factory.mktemp("ui-pairwise")
    db = make_run_db(folder / "run.db")
    inputs = folder / f"in{RLO}"
    inputs.mkdir()
    a, b = write_files(inputs, RECORDS)
    with JudgeServer(fair=False) as server:
        code, out = compare(str(a), str(b), "--judge", "openai:always-1", "--base-url", server.url, "--db", str(db))
    assert code == 0 and out["overall"]["flip"]["rate"] == 1.0, out
    plain = make_run_db(folder / "plain.db")
    with Explorer([db], cache_dir=folder / "cache") as ex, TestClient(create_ui_app(ex)) as c:
        yield c, db, plain


def test_the_page_shows_the_report_s_numbers(site: tuple[TestClient, Path, Path], tmp_path: Path) -> None:
    c, db, _ = site
    page = c.get("/ui/side-by-side")
    assert page.status_code == 200
    [expected] = [pw.stored_tables(cmp) for cmp in pw.stored_comparisons(db)]
    report = build_report(db, tmp_path / "out").pairwise
    assert report is not None and report[0]["overall"] == expected["overall"]  # one function, both places
    overall = expected["overall"]
    assert overall["pairs"] == 2 and overall["flip"]["rate"] == 1.0
    row = page.text.split("<td>overall</td>")[1].split("</tr>")[0]
    for key in ("win", "tie", "loss", "flip"):
        assert f'<td class="num">{fmt_rate(overall[key])}</td>' in row
    assert page.text.count('<details class="flip">') == 2  # the always-"1" judge flips on both pairs


def test_flipped_pairs_show_texts_and_both_verdicts_escaped_and_isolated(site: tuple[TestClient, Path, Path]) -> None:
    c, _, _ = site
    page = c.get("/ui/side-by-side").text
    assert XSS not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "Столица Франции?" in page and "Париж" in page and "Лион" in page
    assert "Verdict with A as answer 1" in page and "Verdict with B as answer 1" in page
    assert RLO in page and unisolated(page) == []


def test_nav_links_the_page_only_when_there_are_comparisons(site: tuple[TestClient, Path, Path],
                                                             tmp_path: Path) -> None:
    c, _, plain = site
    assert 'href="/ui/side-by-side"' in c.get("/ui/").text
    with Explorer([plain], cache_dir=tmp_path / "cache") as ex, TestClient(create_ui_app(ex)) as other:
        assert 'href="/ui/side-by-side"' not in other.get("/ui/").text
        missing = other.get("/ui/side-by-side")
        assert missing.status_code == 404 and "pollux compare" in missing.text


def test_flips_parameter_is_validated_and_limits_the_list(site: tuple[TestClient, Path, Path]) -> None:
    c, _, _ = site
    one = c.get("/ui/side-by-side?flips=1")
    assert one.status_code == 200 and one.text.count('<details class="flip">') == 1 and "the first 1 shown" in one.text
    bad = c.get("/ui/side-by-side?flips=lots")
    assert bad.status_code == 400 and "flips" in bad.text


def test_a_database_of_compare_alone_opens_for_this_page(tmp_path: Path) -> None:
    folder = tmp_path / "odd?name#here"  # read-only URIs must quote the path
    folder.mkdir()
    db = folder / "cmp.db"
    a, b = write_files(folder, RECORDS)
    with JudgeServer(fair=False) as server:
        code, out = compare(str(a), str(b), "--judge", "openai:always-1", "--base-url", server.url, "--db", str(db))
    assert code == 0, out
    with Explorer([db], cache_dir=tmp_path / "cache") as ex, TestClient(create_ui_app(ex)) as c:
        runs = c.get("/ui/")
        assert runs.status_code == 200 and 'href="/ui/side-by-side"' in runs.text
        page = c.get("/ui/side-by-side")
        assert page.status_code == 200 and page.text.count('<details class="flip">') == 2
