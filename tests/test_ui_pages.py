"""What the UI's pages show, read over HTTP from a real run database built here: every data field
isolated for text direction, no literal `None`, counts with thousands separators, wide tables in
a scroll container, and verdict headers that sort on the server (issue 23 items 13 and 15).

The database is hostile and large enough: every text a run carries (judge, source, record id,
model, task type, criterion, group, texts, rationale, reviewer, comment) holds U+202E RIGHT-TO-LEFT
OVERRIDE, which reverses the text after it unless the field is isolated (`<bdi>`, an element with
`dir`, or U+2068…U+2069 where markup cannot go: `<option>`, `<title>`); most criteria are outside
the taxonomy (no group) and half the answers have no task type; one model has 1,040 answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from pollux.records import JudgeItem
from pollux.store import JobRow, RunStore
from pollux.ui.app import create_ui_app
from pollux.ui.queries import Explorer
from pollux.verdicts import Verdict
from test_ui_queries import R2

RLO = "\u202e"
FSI, PDI = "\u2068", "\u2069"
MODEL = f"model{RLO}-ltr"
N_BIG = 1040  # answers of MODEL: counts of four digits
CRITERION = f"крит{RLO}ерий"  # outside the taxonomy: no group
GROUPED = ("Грамотность", f"gen{RLO}eral")


def build_db(path: Path) -> tuple[Path, int]:
    """The hostile database (see the module doc); returns it and a hostile answer's record_pk."""
    with RunStore(path) as store:
        run, _ = store.open_run(f"judge{RLO}-a", {"judge": f"judge{RLO}-a"})
        with store.transaction():
            pks = []
            for model, n in ((MODEL, N_BIG), ("alpha", 3)):
                for q in range(n):
                    texts = {"instruction": f"Вопрос {RLO}{q}", "answer": f"Ответ {RLO}{model} {q}",
                             "reference_answer": f"Эталон {RLO}"}
                    pk = store.upsert_record({
                        "source": f"ans{RLO}.jsonl", "record_id": f"q{RLO}{q}", "model_id": model, "line": q + 1,
                        "answer_key": f"{model}-{q}", **texts, "task_type": None if q % 2 else f"зада{RLO}ча",
                        "task_subtype": None, "task_subsubtype": None, "task_group": f"груп{RLO}па",
                        "extra_json": "{}"})
                    criteria = [(CRITERION, None)] + ([GROUPED] if q == 0 else [])
                    jobs = [JobRow(pk, name, None, group, R2, JudgeItem(criteria_name=name, rubrics=R2, **texts).key, c)
                            for c, (name, group) in enumerate(criteria)]
                    store.add_jobs(run.run_id, jobs)
                    for job in jobs:
                        store.write_verdict(run.run_id, job.item_key, _verdict(job, q))
                    pks.append(pk)
    return path, pks[0]


def _verdict(job: JobRow, q: int) -> Verdict:
    return Verdict(job.criteria_name, head_score=float(q % 3), valid=True, scale_min=0.0, scale_max=2.0,
                   rationale=f"Обоснование {RLO}{q}", judge=f"judge{RLO}-a")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, int]]:
    folder = tmp_path_factory.mktemp("ui-pages")
    db, pk = build_db(folder / "run.db")
    with Explorer([db], reviews_writable=True, cache_dir=folder / "cache") as ex, \
            TestClient(create_ui_app(ex)) as c:
        ex.set_review("0-1", pk, CRITERION, 2.0, f"коммент{RLO}арий", f"ann{RLO}a")
        yield c, pk


def pages(pk: int) -> list[str]:
    return ["/ui/", "/ui/runs/0-1/leaderboard", "/ui/runs/0-1/verdicts", "/ui/runs/0-1/verdicts?page=21",
            f"/ui/runs/0-1/answers/{pk}", "/ui/compare?a=0-1&b=0-1", "/ui/runs/0-1/reviews"]


class _Texts(HTMLParser):
    """Every text node with its parent element (tag, attributes) and the parent's whole text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.nodes: list[tuple[str, dict[str, str | None], str]] = []
        self.children: list[int] = [0]  # child elements of each open element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "link", "input", "br", "img", "progress"):
            return
        self.children[-1] += 1
        self.stack.append((tag, dict(attrs)))
        self.children.append(0)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            self.children.pop()
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        tag, attrs = self.stack[-1] if self.stack else ("", {})
        self.nodes.append((tag, {**attrs, "_alone": "1" if self.children[-1] == 0 else None}, data))


def unisolated(html: str) -> list[str]:
    """The text nodes holding U+202E that are not isolated from the text around them."""
    parser = _Texts()
    parser.feed(html)
    bad = []
    for tag, attrs, data in parser.nodes:
        if RLO not in data:
            continue
        if tag in ("option", "title"):  # plain text only: the isolate characters must enclose it
            inside = all(data[:i].count(FSI) > data[:i].count(PDI) for i, ch in enumerate(data) if ch == RLO)
            ok = inside and data.count(FSI) == data.count(PDI)
        else:  # the data alone in an isolating element
            ok = (tag == "bdi" or "dir" in attrs) and attrs["_alone"] == "1"
        if not ok:
            bad.append(f"<{tag}> {data!r}")
    return bad


def test_every_data_field_is_isolated_for_text_direction(site: tuple[TestClient, int]) -> None:
    c, pk = site
    for path in pages(pk):
        page = c.get(path)
        assert page.status_code == 200, path
        assert RLO in page.text, path  # the page shows the hostile data …
        assert unisolated(page.text) == [], path  # … each field isolated


def test_fields_without_a_value_are_blank_not_none(site: tuple[TestClient, int]) -> None:
    c, pk = site
    for path in pages(pk):
        parser = _Texts()
        parser.feed(c.get(path).text)
        nones = [(tag, data) for tag, _, data in parser.nodes if "None" in data]
        assert nones == [], path


def test_counts_have_thousands_separators(site: tuple[TestClient, int]) -> None:
    c, _ = site
    judgements = N_BIG + 3 + 2
    runs = c.get("/ui/").text
    for field in ("items", "judged"):
        assert re.search(rf'data-field="{field}"><bdi>{judgements // 1000},{judgements % 1000:03d}</bdi>|'
                         rf'data-field="{field}">{judgements // 1000},{judgements % 1000:03d}<', runs), field
    verdicts = c.get("/ui/runs/0-1/verdicts").text
    assert f"{judgements // 1000},{judgements % 1000:03d} matching verdicts" in verdicts
    board = c.get("/ui/runs/0-1/leaderboard").text
    assert f">{N_BIG // 1000},{N_BIG % 1000:03d}<" in board
    compare = c.get("/ui/compare?a=0-1&b=0-1").text
    assert re.search(rf'id="stat-n">{judgements // 1000},{judgements % 1000:03d}<', compare)


def test_wide_tables_scroll_inside_the_page(site: tuple[TestClient, int]) -> None:
    c, _ = site
    css = c.get("/ui/static/ui.css").text
    rule = re.search(r"\.scroll\s*\{([^}]*)\}", css)
    assert rule and re.search(r"overflow-x:\s*auto", rule.group(1)), "no scroll container rule"
    for path, table in (("/ui/", "runs-table"), ("/ui/runs/0-1/leaderboard", "leaderboard-table"),
                        ("/ui/runs/0-1/leaderboard", "criteria-table"), ("/ui/runs/0-1/verdicts", "verdicts-table"),
                        ("/ui/compare?a=0-1&b=0-1", "compare-table"), ("/ui/runs/0-1/reviews", "reviews-table")):
        assert re.search(rf'<div class="scroll">\s*<table[^>]*id="{table}"', c.get(path).text), (path, table)


def test_verdict_headers_sort_on_the_server(site: tuple[TestClient, int]) -> None:
    """The header of a paginated table must not reorder one page in the browser: its links ask the
    server for the sorted verdicts (keeping the filter), and the score header toggles direction."""
    c, _ = site
    page = c.get("/ui/runs/0-1/verdicts?model=alpha").text
    table = re.search(r'<table[^>]*id="verdicts-table"[^>]*>', page)
    assert table and "sortable" not in table.group(0)  # no client-side reorder of the current page
    head = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    links = {re.sub(r"<[^>]+>", "", text).strip(" ▲▼"): href.replace("&amp;", "&")
             for href, text in re.findall(r'<a href="([^"]+)"[^>]*>(.*?)</a>', head)}
    assert {"model", "criterion", "score"} <= set(links), links
    for name, href in links.items():
        assert parse_qs(urlsplit(href).query)["model"] == ["alpha"], name
    by_score = c.get("/ui/runs/0-1/verdicts" + links["score"])
    scores = [float(s) for s in re.findall(r'<td class="num" data-sort="([\d.]+)"', by_score.text)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    head = re.search(r"<thead>(.*?)</thead>", by_score.text, re.S).group(1)
    again = re.search(r'<a href="([^"]+)"[^>]*>score', head).group(1).replace("&amp;", "&")
    ascending = [float(s) for s in re.findall(r'<td class="num" data-sort="([\d.]+)"',
                                             c.get("/ui/runs/0-1/verdicts" + again).text)]
    assert ascending == sorted(ascending) and ascending != scores
