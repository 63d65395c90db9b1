"""The UI's sign-in and error hardening (issue 23 items 5, 6, 12): sign-out revokes the session on
the server, wrong keys are throttled (per client and globally) without locking out a signed-in
user, and every error — an out-of-range number, a corrupt database page — is a 4xx/5xx page or
JSON with the security headers, never a bare 500.

In process through Starlette's TestClient over real SQLite files built by tests/test_ui_web.py."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pollux.ui.app import CSP, create_ui_app
from pollux.ui.auth import COOKIE, SignInThrottle
from pollux.ui.queries import Explorer
from test_ui_web import KEY, ORIGIN, csrf_of, make_ui_db, sign_in

REVIEW = {"criteria_name": "Полезность", "score": "1", "comment": "", "reviewer": "anna"}


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[FastAPI]:
    db = make_ui_db(tmp_path / "run.db")
    with Explorer([db], reviews_writable=True) as explorer:
        yield create_ui_app(explorer, key=KEY)


def assert_headers(r: object) -> None:
    headers = r.headers  # type: ignore[attr-defined]
    assert headers["content-security-policy"] == CSP and headers["x-content-type-options"] == "nosniff"


def test_sign_out_revokes_the_session_on_the_server(app: FastAPI) -> None:
    """Issue 23 item 5: the old cookie and its CSRF token, replayed after sign-out, write nothing."""
    with TestClient(app) as c:
        assert sign_in(c).status_code == 303
        cookie = c.cookies[COOKIE]
        token = csrf_of(c.get("/ui/runs/0-1/answers/1").text)
        out = c.post("/ui/signout", data={"csrf": token}, headers={"Origin": ORIGIN}, follow_redirects=False)
        assert out.status_code == 303
        c.cookies.set(COOKIE, cookie, path="/ui")  # the stolen / kept cookie, replayed
        replay = c.post("/ui/runs/0-1/answers/1/review", data={**REVIEW, "csrf": token},
                        headers={"Origin": ORIGIN}, follow_redirects=False)
        assert replay.status_code == 401, replay.text[:300]
        assert 'name="csrf-token"' not in c.get("/ui/").text  # no longer signed in
        assert "No reviews yet" in c.get("/ui/runs/0-1/reviews").text
        assert sign_in(c).status_code == 303  # signing in again works, with a new session
        fresh = csrf_of(c.get("/ui/runs/0-1/answers/1").text)
        assert fresh != token
        ok = c.post("/ui/runs/0-1/answers/1/review", data={**REVIEW, "csrf": fresh},
                    headers={"Origin": ORIGIN}, follow_redirects=False)
        assert ok.status_code == 303


def test_wrong_keys_are_throttled_per_client(app: FastAPI) -> None:
    """Issue 23 item 6: after the client's budget of wrong keys, a clear 429 with Retry-After;
    the key is not even checked then (so the 429 tells nothing about it)."""
    per_client = SignInThrottle().per_client_burst
    with TestClient(app, client=("10.0.0.1", 1)) as attacker:
        for _ in range(per_client):
            assert sign_in(attacker, "wrong").status_code == 403
        refused = sign_in(attacker, "wrong")
        assert refused.status_code == 429 and "too many wrong keys" in refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert_headers(refused)
        assert sign_in(attacker, KEY).status_code == 429  # not checked while throttled
        # another client is not this client's victim
        with TestClient(app, client=("10.0.0.2", 1)) as other:
            assert sign_in(other, KEY).status_code == 303


def test_a_signed_in_user_is_never_locked_out_by_the_throttle(app: FastAPI) -> None:
    """Issue 23 item 6 (global): wrong keys from many clients exhaust the global budget; a user
    already signed in still signs in with the right key and still writes; a new client gets 429."""
    throttle = SignInThrottle()
    with TestClient(app, client=("10.1.0.1", 1)) as user:
        assert sign_in(user).status_code == 303
        attackers = [TestClient(app, client=(f"10.2.0.{n}", 1)) for n in range(throttle.global_burst)]
        for n in range(throttle.global_burst):
            assert sign_in(attackers[n], f"wrong-{n}").status_code == 403  # one wrong key each
        newcomer = TestClient(app, client=("10.3.0.1", 1))
        assert sign_in(newcomer, KEY).status_code == 429  # nobody's key is checked during an attack
        again = sign_in(user, KEY)
        assert again.status_code == 303, again.text[:300]  # the signed-in user typed the key right
        token = csrf_of(user.get("/ui/runs/0-1/answers/1").text)
        review = user.post("/ui/runs/0-1/answers/1/review", data={**REVIEW, "csrf": token},
                           headers={"Origin": ORIGIN}, follow_redirects=False)
        assert review.status_code == 303


@pytest.fixture(scope="module")
def read_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = make_ui_db(tmp_path_factory.mktemp("ui-sec") / "run.db")
    with Explorer([db]) as explorer, \
            TestClient(create_ui_app(explorer), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("path", "name"), [
    ("/ui/runs/0-1/verdicts?page=99999999999999999999999", "page"),
    ("/ui/runs/0-1/verdicts?page=9223372036854775807", "page"),
    ("/ui/runs/0-1/answers/9223372036854775808", "record"),
    ("/ui/runs/0-1/answers/99999999999999999999999", "record"),
    ("/ui/compare?a=0-1&b=0-2&page=99999999999999999999999", "page"),
])
def test_numbers_past_sqlite_range_are_400_naming_them(read_client: TestClient, path: str, name: str) -> None:
    """Issue 23 item 12: a 400 page naming the parameter, with the security headers."""
    r = read_client.get(path)
    assert r.status_code == 400, (path, r.status_code, r.text[:300])
    assert_headers(r)
    message = re.search(r'id="error-message">([^<]*)<', r.text)
    assert message and repr(name) in html.unescape(message.group(1)), r.text[:300]
    api = read_client.get(path, headers={"Accept": "application/json"})
    assert api.status_code == 400 and name in api.json()["error"]["message"]


def corrupt_pages(path: Path, first_page: int) -> None:
    """Overwrite every page of a real SQLite file from `first_page` on (page 1 holds the schema,
    so the database still opens) with garbage: a corrupt page in a valid database."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for start in range(page_size * (first_page - 1), len(data), page_size):
        data[start:start + page_size] = b"\xa5" * page_size
    path.write_bytes(bytes(data))


def test_a_corrupt_database_page_is_an_error_page_with_headers(tmp_path: Path) -> None:
    db = make_ui_db(tmp_path / "run.db")
    with Explorer([db]) as explorer:
        app = create_ui_app(explorer)
        with TestClient(app, raise_server_exceptions=False) as c:
            assert c.get("/ui/runs/0-1/verdicts").status_code == 200
    corrupt_pages(db, 4)
    with Explorer([db]) as explorer, TestClient(create_ui_app(explorer), raise_server_exceptions=False) as c:
        for path in ("/ui/runs/0-1/verdicts?page=2", "/ui/runs/0-1/leaderboard", "/ui/api/runs"):
            r = c.get(path)
            assert r.status_code in (500, 503), (path, r.status_code, r.text[:300])
            assert_headers(r)
            if "/api/" in path:
                assert "database" in r.json()["error"]["message"]
            else:
                assert r.headers["content-type"].startswith("text/html") and "database" in r.text
