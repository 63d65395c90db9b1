"""The web UI over HTTP: every page, filters in the query string, sign-in / CSRF / Origin rules,
bad parameters as 4xx naming them, the CSP header, judge live's stream, and `pollux serve --ui`
mounting the UI beside the judge API (a real subprocess with a tiny judge and a key).

The app runs in process through Starlette's TestClient (real HTTP semantics, no socket) over a
real SQLite run database built here; the serve test starts a real server on loopback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop
from pollux.store import JobRow, RunStore
from pollux.ui.app import CSP, create_ui_app
from pollux.ui.auth import COOKIE
from pollux.ui.queries import Explorer
from pollux.verdicts import Verdict

KEY = "ui-test-key-42"
ORIGIN = "http://testserver"
# Untrusted answers: each payload, if it ever ran, would set window.__pwned and the page title.
SCRIPT = '<script>window.__pwned=1;document.title="pwned"</script>'
IMG = '<img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'
LINK = '<a href="javascript:window.__pwned=1;document.title=\'pwned\'">нажми</a>'
PAYLOADS = (SCRIPT, IMG, LINK)
R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."
R1 = "0: нарушения нет.\n\n1: нарушение есть."
CRITERIA = (("Полезность", "value", "subjective", R2, 2.0), ("Грамотность", "grammar", "general", R2, 2.0),
            ("Нарушение формата", "narushenie_formata", "critical", R1, 1.0))
# run 2 disagrees with run 1 by these amounts on "Полезность" (question → B − A); elsewhere they agree
DISAGREE = {0: -2.0, 1: -1.0, 2: 0.0, 3: -1.0}


def score_a(model: str, i: int, criterion_id: str) -> float:
    if criterion_id == "narushenie_formata":
        return 0.0
    return 2.0 if model == "alpha" else float(i % 2)


def score_b(model: str, i: int, criterion_id: str) -> float:
    base = score_a(model, i, criterion_id)
    if criterion_id == "value" and model == "alpha":
        return base + DISAGREE[i]
    return base


def texts(model: str, i: int) -> dict[str, str]:
    """The instruction, answer and reference of `model`'s answer to question `i`."""
    answer = PAYLOADS[i - 1] if model == "beta" and i >= 1 else f"Ответ {model} на вопрос {i}"
    return {"instruction": f"Вопрос {i}: объясни <b>жирно</b>", "answer": answer,
            "reference_answer": "Эталон" if i == 0 else ""}


def item_key(model: str, i: int, criterion_id: str) -> str:
    """The store's key of one judgement: its content's key, as `pollux evaluate` writes it (so the
    run joins expert files on it)."""
    name, _, _, rubrics, _ = next(c for c in CRITERIA if c[1] == criterion_id)
    return JudgeItem(criteria_name=name, rubrics=rubrics, **texts(model, i)).key


def make_ui_db(path: Path, *, pending_in_b: int = 0) -> Path:
    """Two runs of two judges over the same 8 answers (2 models × 4 questions) × 3 criteria.
    Three answers of beta carry script, onerror and javascript: payloads (one rationale too). Run 2
    ("judge-b") differs from run 1 on alpha's "Полезность" by DISAGREE; its last `pending_in_b`
    jobs have no verdict yet (an unfinished run)."""
    with RunStore(path) as store:
        run_a, _ = store.open_run("judge-a", {"judge": "judge-a", "engine": {"template": {}, "sampling": {}}})
        run_b, _ = store.open_run("judge-b", {"judge": "judge-b", "engine": {"template": {}, "sampling": {}}},
                                  new_run=True)
        pending: list[tuple[int, str, Verdict]] = []
        for model in ("alpha", "beta"):
            for i in range(4):
                pk = store.upsert_record({
                    "source": "answers.jsonl", "record_id": f"q{i}", "model_id": model, "line": i + 1,
                    "answer_key": f"{model}-{i}", **texts(model, i),
                    "task_type": "Объяснить концепт" if i % 2 else "Решить задачу", "task_subtype": None,
                    "task_subsubtype": None, "task_group": "Поиск информации", "extra_json": "{}",
                })
                jobs = [JobRow(pk, name, cid, group, rubrics, item_key(model, i, cid), n)
                        for n, (name, cid, group, rubrics, _) in enumerate(CRITERIA)]
                for run, scorer in ((run_a, score_a), (run_b, score_b)):
                    store.add_jobs(run.run_id, jobs)
                    for job, (_, cid, _, _, smax) in zip(jobs, CRITERIA, strict=True):
                        rationale = SCRIPT if (model == "beta" and i == 1 and cid == "value") else \
                            f"Обоснование {run.judge} {model} {i} {cid}"
                        verdict = Verdict(job.criteria_name, head_score=scorer(model, i, cid), valid=True,
                                          scale_min=0.0, scale_max=smax, rationale=rationale, judge=run.judge)
                        pending.append((run.run_id, job.item_key, verdict))
        for k, (run_id, key, verdict) in enumerate(pending):
            if not (run_id == run_b.run_id and k >= len(pending) - pending_in_b):
                store.write_verdict(run_id, key, verdict)
    return path


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "the page carries no CSRF token (not signed in?)"
    return match.group(1)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ui_db(tmp_path_factory.mktemp("ui-web") / "run.db")


@pytest.fixture(scope="module")
def client(db: Path) -> Iterator[TestClient]:
    """A read-only UI without a key: anyone may look, nobody may write."""
    with Explorer([db]) as explorer, TestClient(create_ui_app(explorer)) as c:
        yield c


@pytest.fixture()
def writable(tmp_path: Path) -> Iterator[TestClient]:
    """A writable UI with a key, over a fresh copy of the database (reviews are written)."""
    db = make_ui_db(tmp_path / "run.db")
    with Explorer([db], reviews_writable=True) as explorer, \
            TestClient(create_ui_app(explorer, key=KEY)) as c:
        yield c


def sign_in(c: TestClient, key: str = KEY) -> httpx.Response:
    return c.post("/ui/signin", data={"key": key, "next": "/ui/"}, headers={"Origin": ORIGIN},
                  follow_redirects=False)


def test_every_page_renders_with_security_headers(client: TestClient) -> None:
    pages = {
        "/ui/": ["Runs", "judge-a", "judge-b", "0-1", "0-2"],
        "/ui/runs/0-1/leaderboard": ["Leaderboard", "alpha", "beta", "heat-"],
        "/ui/runs/0-1/verdicts": ["24 matching verdicts", "Полезность", "Грамотность"],
        "/ui/runs/0-1/reviews": ["No reviews yet", "/ui/runs/0-1/reviews/export"],
        "/ui/compare": ["Compare two runs", "judge-b"],
        "/ui/compare?a=0-1&b=0-2": ["Spearman", "confusion", "largest disagreement first"],
        "/ui/signin": ["Sign in", 'name="key"'],
    }
    for path, expected in pages.items():
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        for text in expected:
            assert text in r.text, (path, text)
        assert r.headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in r.text and "onerror=\"" not in r.text, path
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    js = client.get("/ui/static/ui.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/../app.py").status_code == 404
    runs = client.get("/ui/api/runs").json()["runs"]
    assert [r["ref"] for r in runs] == ["0-1", "0-2"] and all(r["finished"] for r in runs)


def test_verdict_filters_live_in_the_query_string(client: TestClient) -> None:
    r = client.get("/ui/runs/0-1/verdicts", params={"criterion": "Грамотность", "page_size": "3"})
    assert r.status_code == 200
    rows = re.findall(r'<tr class="verdict[^"]*" data-criterion="([^"]+)"', r.text)
    assert rows == ["Грамотность"] * 3
    assert 'data-total="8"' in r.text and "page 1 of 3" in r.text
    next_link = re.search(r'href="\?([^"]+)" rel="next"', r.text)
    assert next_link and "criterion=" in next_link.group(1) and "page=2" in next_link.group(1)
    page2 = client.get("/ui/runs/0-1/verdicts?" + next_link.group(1).replace("&amp;", "&"))
    assert "page 2 of 3" in page2.text and 'data-total="8"' in page2.text
    scored = client.get("/ui/runs/0-1/verdicts", params={"model": "beta", "score_min": "1", "score_max": "1"})
    assert 'data-total="4"' in scored.text  # beta scores 1 on questions 1 and 3, two averaged criteria each
    found = client.get("/ui/runs/0-1/verdicts", params={"q": "нажми"})
    assert 'data-total="3"' in found.text  # the javascript: link's text, as words, on beta q3's three criteria


def test_untrusted_text_is_rendered_as_text(client: TestClient, db: Path) -> None:
    listing = client.get("/ui/runs/0-1/verdicts", params={"model": "beta"}).text
    links = re.findall(r'href="(/ui/runs/0-1/answers/\d+)[^"]*"', listing)
    assert links
    pages = [client.get(link).text for link in dict.fromkeys(links)]
    joined = "\n".join(pages)
    for payload in PAYLOADS:
        assert payload not in joined
    assert "&lt;script&gt;window.__pwned=1;document.title=&#34;pwned&#34;&lt;/script&gt;" in joined
    assert "&lt;img src=x onerror=" in joined and 'href="javascript:' not in joined
    assert "объясни &lt;b&gt;жирно&lt;/b&gt;" in joined
    evil_back = client.get(links[0], params={"back": "javascript:alert(1)"}).text
    assert 'href="javascript:' not in evil_back and 'id="back-link"' in evil_back


def test_bad_parameters_are_4xx_naming_them(client: TestClient) -> None:
    cases = {
        "/ui/runs/0-1/verdicts?page=abc": (400, "page"),
        "/ui/runs/0-1/verdicts?page=0": (400, "page"),
        "/ui/runs/0-1/verdicts?page_size=100000": (400, "page_size"),
        "/ui/runs/0-1/verdicts?score_min=lots": (400, "score_min"),
        "/ui/runs/0-1/verdicts?only=everything": (400, "only"),
        "/ui/runs/0-1/verdicts?sort=sideways": (400, "sort"),
        "/ui/runs/zz/verdicts": (400, "run"),
        "/ui/runs/0-99/verdicts": (404, "0-99"),
        "/ui/runs/0-1/answers/abc": (400, "record"),
        "/ui/runs/0-1/answers/99999": (404, "99999"),
        "/ui/compare?a=0-1": (400, "b"),
        "/ui/compare?a=0-1&b=nope": (400, "b"),
    }
    for path, (status, name) in cases.items():
        r = client.get(path)
        assert r.status_code == status, (path, r.status_code, r.text[:300])
        message = re.search(r'id="error-message">([^<]*)<', r.text)
        assert message and name in message.group(1), (path, r.text[:300])
    api = client.get("/ui/api/runs", headers={"Accept": "application/json"})
    assert api.status_code == 200


def test_read_only_ui_refuses_every_write(client: TestClient) -> None:
    r = client.post("/ui/signin", data={"key": "anything"}, headers={"Origin": ORIGIN})
    assert r.status_code == 403 and "without a key" in r.text
    r = client.post("/ui/runs/0-1/answers/1/review", data={"criteria_name": "Полезность", "score": "1"},
                    headers={"Origin": ORIGIN})
    assert r.status_code == 401 and "read-only" in r.text
    live = client.get("/ui/live")
    assert live.status_code == 200 and "live-submit" in live.text and "disabled" in live.text


def test_sign_in_csrf_and_origin_rules(writable: TestClient) -> None:
    review_through_every_rule(writable)


def review_through_every_rule(c: TestClient) -> str:
    """Sign in and review, after each rule refused what it must refuse; the export's text."""
    page = c.get("/ui/runs/0-1/answers/1")
    assert "review-form" not in page.text and "sign in to review" in page.text
    review = {"criteria_name": "Полезность", "score": "1", "comment": "<b>слишком</b> щедро", "reviewer": "anna"}
    assert c.post("/ui/runs/0-1/answers/1/review", data=review, headers={"Origin": ORIGIN}).status_code == 401
    wrong = sign_in(c, "not-the-key")
    assert wrong.status_code == 403 and COOKIE not in wrong.headers.get("set-cookie", "")
    assert sign_in(c, KEY).status_code == 303
    [cookie] = [h for h in c.cookies.jar]
    good = sign_in(c, KEY).headers["set-cookie"]
    assert "HttpOnly" in good and "SameSite=strict" in good.replace("Strict", "strict") and "Path=/ui" in good
    assert KEY not in cookie.value
    token = csrf_of(c.get("/ui/runs/0-1/answers/1").text)
    post = "/ui/runs/0-1/answers/1/review"
    refused = {
        "no CSRF token": (review, {"Origin": ORIGIN}, 403, "missing CSRF token"),
        "wrong CSRF token": ({**review, "csrf": "x" + token[1:]}, {"Origin": ORIGIN}, 403, "invalid CSRF"),
        "cross-origin": ({**review, "csrf": token}, {"Origin": "http://evil.example"}, 403, "cross-origin"),
        "cross-site referer": ({**review, "csrf": token}, {"Referer": "http://evil.example/x"}, 403, "cross-origin"),
        "no origin at all": ({**review, "csrf": token}, {}, 403, "neither an Origin"),
    }
    for why, (data, headers, status, message) in refused.items():
        r = c.post(post, data=data, headers=headers, follow_redirects=False)
        assert r.status_code == status and message in r.text, (why, r.status_code, r.text[:300])
    assert "No reviews yet" in c.get("/ui/runs/0-1/reviews").text  # nothing refused was stored
    ok = c.post(post, data={**review, "csrf": token}, headers={"Referer": ORIGIN + "/ui/runs/0-1/answers/1"},
                follow_redirects=False)
    assert ok.status_code == 303, ok.text
    listing = c.get("/ui/runs/0-1/reviews").text
    assert "anna" in listing and "&lt;b&gt;слишком&lt;/b&gt; щедро" in listing
    export = c.get("/ui/runs/0-1/reviews/export")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    [row] = [json.loads(line) for line in export.text.splitlines()]
    assert row["criteria_name"] == "Полезность" and row["criteria_score"] == 1.0
    assert row["annotations"][0]["comment"] == "<b>слишком</b> щедро"
    bad_score = c.post(post, data={**review, "score": "7", "csrf": token}, headers={"Origin": ORIGIN})
    assert bad_score.status_code == 400 and "score" in bad_score.text
    return export.text


def test_compare_a_judge_with_expert_scores(writable: TestClient, tmp_path: Path) -> None:
    """The review export is an expert file: the UI opens it beside the run and compares them."""
    experts = tmp_path / "reviews.jsonl"
    experts.write_text(review_through_every_rule(writable), encoding="utf-8")
    db = tmp_path / "run.db"
    with Explorer([db], experts=[experts]) as explorer, TestClient(create_ui_app(explorer)) as c:
        runs = c.get("/ui/api/runs").json()["runs"]
        assert [r["ref"] for r in runs] == ["0-1", "0-2", "1-1"]
        page = c.get("/ui/compare", params={"a": "0-1", "b": "1-1"})
        assert page.status_code == 200, page.text[:500]
        assert re.search(r'id="stat-n">1<', page.text)  # one reviewed (answer, criterion)
        [diff] = re.findall(r'<tr class="pair" data-diff="([^"]+)"', page.text)
        assert float(diff) == 1.0  # the judge gave alpha's q0 a 2, the reviewer a 1


def test_pages_need_sign_in_when_reads_are_protected(db: Path) -> None:
    from fastapi import FastAPI

    from pollux.ui.app import create_ui_router

    app = FastAPI()
    with Explorer([db]) as explorer:
        app.include_router(create_ui_router(explorer, key=KEY, protect_reads=True))
        with TestClient(app) as c:
            r = c.get("/ui/runs/0-1/verdicts?criterion=x", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin?next=%2Fui%2Fruns")
            assert c.get("/ui/api/runs").status_code == 401
            assert c.get("/ui/signin").status_code == 200 and c.get("/ui/static/ui.css").status_code == 200
            assert sign_in(c).status_code == 303
            assert c.get("/ui/runs/0-1/verdicts").status_code == 200


def test_judge_live_streams_text_then_the_verdict(db: Path, tiny_judge: Any) -> None:
    with Explorer([db]) as explorer, TestClient(create_ui_app(explorer, judge=tiny_judge, key=KEY)) as c:
        body = {"instruction": "Сколько будет 2+2?", "answer": "4", "reference": "",
                "criterion_id": "", "criteria_name": "Правильность ответа", "rubrics": R2}
        assert c.post("/ui/live", json=body, headers={"Origin": ORIGIN}).status_code == 401
        sign_in(c)
        page = c.get("/ui/live").text
        assert "Правильность" in page or "option" in page
        refused = c.post("/ui/live", json=body, headers={"Origin": ORIGIN})
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
        headers = {"Origin": ORIGIN, "X-CSRF-Token": csrf_of(page)}
        missing = c.post("/ui/live", json={**body, "answer": " "}, headers=headers)
        assert missing.status_code == 400 and "answer" in missing.json()["error"]["message"]
        with c.stream("POST", "/ui/live", json=body, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert [m["type"] for m in lines[:-1]] == ["delta"] * (len(lines) - 1) and len(lines) >= 2
        final = lines[-1]
        assert final["type"] == "verdict" and isinstance(final["score"], float)
        assert final["criteria_name"] == "Правильность ответа"
        text = "".join(m["text"] for m in lines[:-1])
        assert text.strip() and (final["rationale"] or "").strip()[:10] in text
        catalog_item = c.post("/ui/live", json={**body, "criterion_id": "no-such"}, headers=headers)
        assert catalog_item.status_code == 400 and "criterion_id" in catalog_item.json()["error"]["message"]


def test_serve_mounts_the_ui_beside_the_judge_api(db: Path, tiny_judge_path: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_serve(tiny_judge_path, port, ["--max-new-tokens", "4", "--dtype", "float32", "--device", "cpu",
                                               "--ui", str(db)], env={"POLLUX_API_KEY": KEY}, log_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        item = {"instruction": "2+2?", "answer": "4", "criteria_name": "Правильность", "rubrics": R2}
        assert httpx.post(url + "/v1/judge", json=item).status_code == 401  # the API still needs the bearer
        ok = httpx.post(url + "/v1/judge", json=item, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200, ok.text
        page = httpx.get(url + "/ui/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/signin")
        assert httpx.get(url + "/ui/api/runs").status_code == 401
        bearer_only = httpx.get(url + "/ui/", headers={"Authorization": f"Bearer {KEY}"}, follow_redirects=False)
        assert bearer_only.status_code == 303  # the UI's own sign-in, not the API's header
        with httpx.Client(base_url=url) as c:
            assert c.post("/ui/signin", data={"key": "wrong"}, headers={"Origin": url}).status_code == 403
            assert c.post("/ui/signin", data={"key": KEY}, headers={"Origin": url}).status_code == 303
            runs = c.get("/ui/")
            assert runs.status_code == 200 and "judge-b" in runs.text
            assert runs.headers["content-security-policy"] == CSP
            live = c.get("/ui/live")
            assert "Judge live" in runs.text and live.status_code == 200
            body = {"instruction": "2+2?", "answer": "4", "criteria_name": "Правильность", "rubrics": R2}
            streamed = c.post("/ui/live", json=body, headers={"Origin": url, "X-CSRF-Token": csrf_of(live.text)},
                              timeout=60)
            assert streamed.status_code == 200, streamed.text
            assert json.loads(streamed.text.splitlines()[-1])["type"] == "verdict"  # the server's own judge
    finally:
        assert stop(proc) in (0, -15), log.read_text()


def test_pollux_ui_command_generates_a_key_and_serves(db: Path, tmp_path: Path) -> None:
    """The verb as users run it: a writable UI without a key prints a generated one, which signs in."""
    import os
    import subprocess
    import sys
    import time

    port, log = free_port(), tmp_path / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "POLLUX_API_KEY"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from pollux.cli import main; main()", "ui", str(db),
                                 "--writable", "--no-browser", "--port", str(port)], stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(url + "/ui/api/runs", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        key = re.search(r"sign-in key for this session: (\S+)", log.read_text())
        assert key, log.read_text()
        rebound = httpx.get(url + "/ui/", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400  # a page whose name was rebound to 127.0.0.1 reads nothing
        with httpx.Client(base_url=url) as c:
            assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
            assert c.post("/ui/signin", data={"key": key.group(1)}, headers={"Origin": url}).status_code == 303
            assert 'name="csrf-token"' in c.get("/ui/").text
    finally:
        assert stop(proc) in (0, -15), log.read_text()


def test_pollux_ui_command_names_a_missing_database(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pollux.cli import app

    result = CliRunner().invoke(app, ["ui", str(tmp_path / "nope.db"), "--no-browser"])
    assert result.exit_code == 2 and "nope.db" in result.output
