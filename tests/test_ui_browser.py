"""The web UI in real Chromium (Selenium + Debian's chromedriver) against a real server on loopback.

One browser session and one server for the module, over a database built here with two runs (the
second unfinished) and answers carrying `<script>`, `<img onerror>` and `javascript:` payloads that
would set `window.__pwned` and the page title if they ever ran. The tests walk what a user does:
watch a run finish, open a run, filter to one criterion, open an answer, sort the leaderboard,
compare two runs, sign in, review and find the review in the export, judge live. Each page is
saved as a screenshot into $POLLUX_UI_SCREENSHOTS (else the module's tmp folder).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pollux.server.launch import free_port
from pollux.store import RunStore
from pollux.ui.app import create_ui_app
from pollux.ui.queries import Explorer
from pollux.verdicts import Verdict
from test_ui_web import IMG, KEY, SCRIPT, item_key, make_ui_db

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (run .ci/install-browser)")

TITLES = ("Runs", "verdicts", "answer", "leaderboard", "compare", "reviews", "judge live", "sign in")


class UI:
    """The browser, the server's URL and the screenshot folder, shared by the module's tests."""

    def __init__(self, driver: Any, url: str, shots: Path, db: Path):
        self.driver, self.url, self.shots, self.db = driver, url, shots, db

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)
        self.wait(lambda: self.driver.execute_script("return document.body && document.body.dataset.ready") == "1",
                  f"{path} loaded")

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            time.sleep(0.05)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)) and path.stat().st_size > 10_000, name
        return path

    def assert_nothing_ran(self) -> None:
        """No injected payload executed: the flag is unset and the title is the page's own."""
        assert self.driver.execute_script("return window.__pwned === undefined")
        title = self.driver.title
        assert "pwned" not in title and title.endswith("· pollux ui"), title


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, tiny_judge: Any) -> Iterator[UI]:
    """The UI served by uvicorn on a loopback port in a thread (the `pollux ui` process itself is
    tested in test_ui_web.py), with the session's tiny judge for judge live, and one browser."""
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("ui-browser")
    shots = Path(os.environ.get("POLLUX_UI_SCREENSHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    db = make_ui_db(tmp / "run.db", pending_in_b=1)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    port = free_port()
    with Explorer([db], reviews_writable=True) as explorer:
        server = uvicorn.Server(uvicorn.Config(create_ui_app(explorer, judge=tiny_judge, key=KEY),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.02)
            yield UI(driver, f"http://127.0.0.1:{port}", shots, db)
        finally:
            driver.quit()
            server.should_exit = True
            thread.join(10)


def test_runs_page_shows_a_run_finishing_live(ui: UI) -> None:
    ui.open("/ui/")
    assert [r.get_attribute("data-ref") for r in ui.all("#runs-table tbody tr")] == ["0-1", "0-2"]
    state = ui.css('tr[data-ref="0-2"] [data-field="state"]')
    assert state.text == "running"
    judged_before = int(ui.css('tr[data-ref="0-2"] [data-field="judged"]').text)
    ui.shot("runs")
    with RunStore(ui.db) as store:  # the last pending judgement of run 2 arrives, as `pollux evaluate` writes it
        store.write_verdict(2, item_key("beta", 3, "narushenie_formata"), Verdict(
            "Нарушение формата", head_score=0.0, valid=True, scale_min=0.0, scale_max=1.0, rationale="ок",
            judge="judge-b"))
    ui.wait(lambda: state.text == "finished", "the runs page shows run 0-2 finished", timeout=10)
    assert int(ui.css('tr[data-ref="0-2"] [data-field="judged"]').text) == judged_before + 1
    assert ui.css('tr[data-ref="0-2"] progress').get_attribute("value") == "1"
    ui.assert_nothing_ran()


def test_open_a_run_and_filter_to_one_criterion(ui: UI) -> None:
    from selenium.webdriver.support.ui import Select

    ui.open("/ui/")
    ui.css('tr[data-ref="0-1"] a.run-link').click()
    ui.wait(lambda: "/ui/runs/0-1/verdicts" in ui.driver.current_url, "the run's verdicts opened")
    assert ui.css("#verdicts-summary").get_attribute("data-total") == "24"
    Select(ui.css("#f-criterion")).select_by_value("Грамотность")  # its text is isolated (U+2068 … U+2069)
    ui.css("#f-apply").click()
    ui.wait(lambda: "criterion=" in ui.driver.current_url, "the filter is in the URL")
    ui.wait(lambda: ui.css("#verdicts-summary").get_attribute("data-total") == "8", "8 grammar verdicts")
    cells = [c.text for c in ui.all("#verdicts-table td.criterion")]
    assert cells == ["Грамотность"] * 8
    ui.shot("verdicts")
    ui.assert_nothing_ran()


def test_answer_with_injected_markup_shows_it_as_text(ui: UI) -> None:
    ui.open("/ui/runs/0-1/verdicts?model=beta&criterion=Полезность")
    links = ui.all("#verdicts-table a.answer-link")
    assert SCRIPT in [a.text for a in links] and IMG in [a.text for a in links]  # shown as text in the list
    ui.assert_nothing_ran()
    next(a for a in links if a.text == SCRIPT).click()
    ui.wait(lambda: "/answers/" in ui.driver.current_url, "the answer page opened")
    ui.wait(lambda: ui.driver.execute_script("return document.body.dataset.ready") == "1", "page ready")
    assert ui.css("#answer-text").text == SCRIPT
    assert ui.css("#instruction").text == "Вопрос 1: объясни <b>жирно</b>"
    rows = ui.all("#criteria-scores tr.criterion-row")
    assert [r.get_attribute("data-criterion") for r in rows] == ["Полезность", "Грамотность", "Нарушение формата"]
    assert SCRIPT in rows[0].text  # the rationale carries the payload too, as text
    assert not ui.all("#answer-text img, #answer-text script, #criteria-scores script")
    ui.shot("answer")
    ui.assert_nothing_ran()
    ui.css("#back-link").click()
    ui.wait(lambda: "criterion=" in ui.driver.current_url, "back keeps the filter")
    for path in ("/ui/runs/0-1/verdicts?model=beta&q=нажми", "/ui/runs/0-1/verdicts?model=beta"):
        ui.open(path)
        for link in ui.all("#verdicts-table a"):
            assert not (link.get_attribute("href") or "").startswith("javascript:")
        ui.assert_nothing_ran()


def test_leaderboard_sorts_by_a_column(ui: UI) -> None:
    ui.open("/ui/runs/0-1/leaderboard")
    models = lambda: [c.text for c in ui.all("#leaderboard-table td.model")]  # noqa: E731
    assert models() == ["alpha", "beta"]  # best first
    header = ui.all("#leaderboard-table thead th")[2]  # overall
    header.click()
    ui.wait(lambda: models() == ["beta", "alpha"], "ascending sort puts beta first")
    header.click()
    ui.wait(lambda: models() == ["alpha", "beta"], "descending sort puts alpha first")
    assert ui.all("#leaderboard-table td.heat-10")  # alpha's perfect scores are coloured
    ui.shot("leaderboard")
    ui.assert_nothing_ran()


def test_compare_two_runs_largest_disagreement_first(ui: UI) -> None:
    from selenium.webdriver.support.ui import Select

    ui.open("/ui/compare")
    Select(ui.css("#pick-a")).select_by_value("0-1")
    Select(ui.css("#pick-b")).select_by_value("0-2")
    ui.css("#pick-apply").click()
    ui.wait(lambda: ui.all("#compare-table tr.pair"), "the compare table")
    diffs = [abs(float(r.get_attribute("data-diff"))) for r in ui.all("#compare-table tr.pair")]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] == 2.0 and diffs.count(1.0) == 2
    assert int(ui.css("#stat-n").text) == 24
    assert float(ui.css("#stat-mae").text) == pytest.approx(4 / 24, abs=1e-3)
    ui.shot("compare")
    ui.assert_nothing_ran()


def test_sign_in_review_and_find_it_in_the_export(ui: UI) -> None:
    from selenium.webdriver.support.ui import Select

    ui.open("/ui/runs/0-1/reviews")
    ui.css("#signin-link").click()
    ui.wait(lambda: ui.all("#key"), "the sign-in form")
    ui.shot("signin")
    ui.css("#key").send_keys(KEY)
    ui.css("#signin-form button").click()
    ui.wait(lambda: "/ui/runs/0-1/reviews" in ui.driver.current_url, "back where sign-in started")
    ui.wait(lambda: ui.all('meta[name="csrf-token"]'), "signed in")
    ui.open("/ui/runs/0-1/verdicts?model=beta&criterion=Полезность")
    next(a for a in ui.all("#verdicts-table a.answer-link") if a.text == IMG).click()
    ui.wait(lambda: ui.all("form.review-form"), "the review forms")
    form = ui.all("form.review-form")[0]
    Select(form.find_element("name", "score")).select_by_value("0.0" if _has_option(form, "0.0") else "0")
    form.find_element("name", "comment").send_keys(IMG + " не отвечает на вопрос")
    form.find_element("name", "reviewer").send_keys("Анна")
    form.find_element("css selector", "button").click()
    ui.wait(lambda: ui.all("#review-saved"), "the review was saved")
    assert IMG in ui.css("tr.criterion-row .review-item").text
    ui.assert_nothing_ran()
    ui.open("/ui/runs/0-1/reviews")
    assert "Анна" in ui.css("#reviews-table").text and IMG in ui.css("#reviews-table").text
    ui.shot("reviews")
    ui.assert_nothing_ran()
    export = ui.driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/ui/runs/0-1/reviews/export').then(r => r.text()).then(done, e => done(String(e)));")
    import json

    [row] = [json.loads(line) for line in export.splitlines() if line]
    assert row["criteria_name"] == "Полезность" and row["answer"] == IMG and row["criteria_score"] == 0.0
    assert row["annotations"][0]["comment"] == IMG + " не отвечает на вопрос"


def _has_option(form: Any, value: str) -> bool:
    return bool(form.find_elements("css selector", f'option[value="{value}"]'))


def test_judge_live_streams_a_rationale_and_a_score(ui: UI) -> None:
    from selenium.webdriver.support.ui import Select

    ui.open("/ui/live")  # signed in by the previous test
    ui.css("#live-instruction").send_keys("Сколько будет 2+2?")
    ui.css("#live-answer").send_keys(SCRIPT)
    options = Select(ui.css("#live-criterion")).options
    assert len(options) > 10  # the POLLUX taxonomy's criteria
    Select(ui.css("#live-criterion")).select_by_index(1)
    ui.css("#live-submit").click()
    ui.wait(lambda: ui.css("#live-rationale").text.strip(), "rationale text appears")
    ui.wait(lambda: ui.css("#live-score").text not in ("…", ""), "a score appears", timeout=30)
    assert ui.css("#live-error").get_attribute("hidden") is not None, ui.css("#live-error").text
    float(ui.css("#live-score").text)  # a number
    ui.shot("live")
    ui.assert_nothing_ran()


def test_wide_tables_scroll_and_verdict_headers_sort_on_the_server(ui: UI) -> None:
    """Issue 23 item 15: in a narrow window the page itself does not overflow (the tables scroll in
    their container); a verdicts header asks the server to sort every matching verdict."""
    size = ui.driver.get_window_size()
    ui.driver.set_window_size(800, size["height"])
    try:
        for path in ("/ui/", "/ui/runs/0-1/leaderboard", "/ui/runs/0-1/verdicts"):
            ui.open(path)
            overflow = ui.driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, overflow)
    finally:
        ui.driver.set_window_size(size["width"], size["height"])
    ui.open("/ui/runs/0-1/verdicts?page_size=5")
    ui.css("#verdicts-table thead th.num a").click()  # score
    ui.wait(lambda: "sort=-score" in ui.driver.current_url, "the header asked the server for the sort")
    ui.wait(lambda: ui.driver.execute_script("return document.body.dataset.ready") == "1", "page ready")
    first = [float(c.get_attribute("data-sort")) for c in ui.all("#verdicts-table td.num") if c.get_attribute("data-sort")]
    assert first and first[0] == 2.0 and first == sorted(first, reverse=True)  # the run's best, not page 1's
