"""The web UI: pages and JSON endpoints under `/ui`, over `pollux.ui.queries.Explorer`.

`create_ui_router` gives the routes alone, so `pollux serve --ui` mounts them beside `/v1/judge`;
`create_ui_app` wraps them in an app of their own for `pollux ui`. Pages are rendered on the
server with Jinja2 (autoescape on: answers and rationales are untrusted text and stay text), and
a small static script adds what needs the browser: sortable tables, live progress, the judge's
streamed rationale. Every response carries a strict Content-Security-Policy (no inline script,
nothing from other origins) as defence in depth. Read-only unless signed in with the key; see
`pollux.ui.auth` for sessions and CSRF, and docs/ui.md.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pollux import pairwise as pw
from pollux.records import JudgeItem, RecordError
from pollux.report.build import fmt_rate, pairwise_groups
from pollux.taxonomy import Catalog, load_catalog
from pollux.ui import params as P
from pollux.ui.auth import COOKIE, SESSION_SECONDS, Auth, AuthError, Session, check_origin, safe_next
from pollux.ui.queries import Explorer, RunRef, VerdictFilter

if TYPE_CHECKING:  # the judge's module imports torch: not at import time of a UI without one
    from pollux.judge import Judge

log = logging.getLogger("pollux.ui")

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
PAGE_SIZE = 50
MAX_BODY = 256 * 1024  # a form or a live-judge request; answers are long, but not this long
MAX_LIVE = 8  # live judgements in progress at once (one runs, the others wait their turn)
LIVE_RETRY_AFTER_S = 10


class UIError(Exception):
    """A request the UI refuses: an HTTP status and a message for people (and headers such as
    Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class LiveSlots:
    """How many live judgements may be in progress at once (running or waiting for the judge).

    Each holds a worker thread of its own while it waits, and the judge serves one at a time, so
    an unbounded queue only grows latency and threads; beyond `limit` a request is a 429."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)
        self._taken = 0
        self._count_lock = threading.Lock()

    @property
    def in_progress(self) -> int:
        return self._taken

    def take(self) -> bool:
        """A place for one more live judgement, or False when all are taken (never waits)."""
        if not self._free.acquire(blocking=False):
            return False
        with self._count_lock:
            self._taken += 1
        return True

    def give_back(self) -> None:
        with self._count_lock:
            self._taken -= 1
        self._free.release()


@dataclass
class UIState:
    explorer: Explorer
    auth: Auth
    judge: Judge | None = None
    catalog: Catalog | None = None
    live: LiveSlots = field(default_factory=lambda: LiveSlots(MAX_LIVE))
    env: Environment = field(default_factory=lambda: _environment())


def _environment() -> Environment:
    # finalize: a missing value (a criterion outside the taxonomy has no group) shows as blank, not "None"
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True, finalize=lambda value: "" if value is None else value)
    env.filters["score"] = _fmt_score
    env.filters["count"] = _fmt_count
    env.filters["heat"] = _heat_class
    env.filters["pretty"] = _pretty_json
    env.filters["rate"] = fmt_rate
    env.globals["qs"] = P.query_string
    return env


def _fmt_score(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _fmt_count(value: Any) -> str:
    """A count with thousands separators (161,076), as the docs write them."""
    return "" if value is None else f"{int(value):,}"


_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _pretty_json(value: Any) -> str:
    """Indented JSON; bidi controls inside its strings are written as `\\uXXXX` escapes (still valid
    JSON), so a judge name with U+202E cannot reverse the rest of its line."""
    text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return _BIDI_CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _heat_class(value: Any) -> str:
    """A CSS class for a 0..1 value (the stylesheet colours heat-0 … heat-10): no inline styles
    under the CSP."""
    if value is None:
        return "heat-none"
    return f"heat-{max(0, min(10, round(float(value) * 10)))}"


def _wants_json(request: Request) -> bool:
    """API-style requests (the page scripts' fetches) get JSON errors; navigations get pages."""
    path = request.url.path
    return "/api/" in path or (path.endswith("/live") and request.method == "POST") \
        or "application/json" in request.headers.get("accept", "")


def _error_response(request: Request, state: UIState, status: int, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": {"message": message, "code": status}}, status_code=status, headers=headers)
    if status == 401 and request.method == "GET" and state.auth.can_sign_in:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/signin?next={quote(target, safe='')}", status_code=303)
    page = render(state, request, "error.html", state.auth.session(request), status=status, message=message)
    page.headers.update(headers or {})
    return page


def _route_class(state: UIState) -> type[APIRoute]:
    class UIRoute(APIRoute):
        """Every UI route: refusals become 4xx pages (HTML) or JSON errors, and every response
        carries the security headers — the same in `pollux ui` and inside `pollux serve`."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    response = await handler(request)
                except UIError as e:
                    response = _error_response(request, state, e.status, e.message, e.headers)
                except AuthError as e:
                    retry = {"Retry-After": str(e.retry_after)} if e.retry_after else None
                    response = _error_response(request, state, e.status, e.message, retry)
                except P.ParamError as e:
                    response = _error_response(request, state, 400, str(e))
                except RequestValidationError as e:
                    where = ".".join(str(x) for x in e.errors()[0]["loc"][1:]) if e.errors() else "request"
                    response = _error_response(request, state, 400, f"parameter {where!r}: {e.errors()[0]['msg']}")
                except Exception as e:  # a server error is still a page with the headers, never a bare 500
                    response = _error_response(request, state, *_server_error(request, e))
                response.headers.update(SECURITY_HEADERS)
                return response

            return run

    return UIRoute


def _server_error(request: Request, error: Exception) -> tuple[int, str, dict[str, str] | None]:
    """The status, message and headers of an unexpected error: 503 (retry) when a database is
    busy, 500 naming a database that cannot be read (a damaged file), else 500; logged in full."""
    log.error("UI %s %s failed", request.method, request.url.path, exc_info=error)
    if isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error)):
        return 503, f"a run database is busy ({error}): try again in a moment", {"Retry-After": "2"}
    if isinstance(error, sqlite3.Error):
        return 500, (f"a run database could not be read ({type(error).__name__}: {error}); check the file with "
                     f"sqlite3 FILE 'PRAGMA integrity_check'"), None
    return 500, f"internal error ({type(error).__name__}): the server's log has the details", None


def create_ui_router(explorer: Explorer, *, judge: Judge | None = None, key: str | None = None,
                     protect_reads: bool = False, catalog: Catalog | None = None,
                     max_live: int = MAX_LIVE) -> APIRouter:
    """All pages and UI endpoints under `/ui`. `judge` enables the judge-live page; `key` enables
    sign-in (and so writes: reviews when the explorer is writable, judge live); `protect_reads`
    makes every page need sign-in (`pollux serve --ui` with a server key); `max_live`: live
    judgements in progress at once (more are a 429)."""
    state = UIState(explorer=explorer, auth=Auth(key, protect_reads=protect_reads), judge=judge,
                    catalog=catalog if catalog is not None else (load_catalog() if judge is not None else None),
                    live=LiveSlots(max_live))
    router = APIRouter(prefix="/ui", route_class=_route_class(state))
    _add_session_routes(router, state)
    _add_page_routes(router, state)
    _add_verdict_routes(router, state)
    _add_review_routes(router, state)
    _add_live_routes(router, state)
    _add_pairwise_routes(router, state)
    return router


def create_ui_app(explorer: Explorer, *, judge: Judge | None = None, key: str | None = None,
                  catalog: Catalog | None = None, allowed_hosts: Sequence[str] | None = None,
                  max_live: int = MAX_LIVE) -> FastAPI:
    """The standalone app of `pollux ui`: the router, and `/` sends browsers to `/ui/`.
    `allowed_hosts`: the Host headers answered (others get a 400), so that a web page whose name
    was rebound to 127.0.0.1 (DNS rebinding) cannot read a UI bound to loopback."""
    app = FastAPI(title="pollux ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(create_ui_router(explorer, judge=judge, key=key, catalog=catalog, max_live=max_live))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        """The security headers on everything, unknown paths' 404s included."""
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


# --- helpers shared by the routes ------------------------------------------------------------

def render(state: UIState, request: Request, name: str, session: Session | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A page: the template with what every page needs (sign-in state, CSRF token, nav)."""
    html = state.env.get_template(name).render(
        request=request, session=session, auth=state.auth, has_judge=state.judge is not None,
        writable=bool(getattr(state.explorer, "reviews_writable", False)), page=name.removesuffix(".html"),
        has_pairwise=bool(_pairwise_dbs(state)),
        status=status, **context)
    return HTMLResponse(html, status_code=status)


def open_run(state: UIState, text: str, name: str = "run") -> tuple[RunRef, dict[str, Any]]:
    """A run reference from the URL and its `runs()` entry; 400 when malformed, 404 when no such
    run is open."""
    try:
        ref = RunRef.parse(text)
    except ValueError as e:
        raise P.ParamError(name, str(e)) from None
    try:
        return ref, dict(state.explorer.run(ref))
    except ValueError as e:
        raise UIError(404, f"no run {text!r} here: {e} (see the runs page)") from None


def explore(call: Callable[[], Any], *, lookup: bool = False) -> Any:
    """Call the explorer; its ValueError (a bad filter value, a bad review) is a 400 — or a 404 for
    a `lookup` (the run is known, so what is missing is the thing looked up)."""
    try:
        return call()
    except ValueError as e:
        raise UIError(404 if lookup else 400, str(e)) from None


async def read_form(request: Request) -> dict[str, str]:
    body = await read_body(request)
    return P.parse_form(body)


async def read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise UIError(413, f"request body exceeds {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- sign-in ---------------------------------------------------------------------------------

def _add_session_routes(router: APIRouter, state: UIState) -> None:
    @router.get("/signin")
    def signin_page(request: Request) -> HTMLResponse:
        return render(state, request, "signin.html", state.auth.session(request),
                      next=safe_next(request.query_params.get("next")), failed=False)

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        check_origin(request)
        form = await read_form(request)
        target = safe_next(form.get("next"))
        if not state.auth.can_sign_in:
            raise UIError(403, "this UI was started without a key: nobody can sign in (read-only)")
        try:
            token = state.auth.sign_in(request, form.get("key", ""))
        except AuthError as e:
            if e.status != 403:
                raise
            log.warning("UI sign-in with a wrong key from %s", request.client.host if request.client else "?")
            return render(state, request, "signin.html", None, status=403, next=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        form = await read_form(request)
        state.auth.sign_out(state.auth.require_write(request, form.get("csrf")))
        response = RedirectResponse("/ui/", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            raise UIError(404, f"no static file {name!r}")
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


# --- read-only pages -------------------------------------------------------------------------

def _add_page_routes(router: APIRouter, state: UIState) -> None:
    """The pages over whole runs: the list (and its JSON for live progress), a leaderboard."""
    @router.get("/")
    def runs_page(request: Request) -> HTMLResponse:
        session = state.auth.require_read(request)
        runs = state.explorer.runs()
        return render(state, request, "runs.html", session, runs=runs,
                      live=any(not r["finished"] for r in runs if r.get("kind", "run") == "run"))

    @router.get("/api/runs")
    def runs_json(request: Request) -> JSONResponse:
        state.auth.require_read(request)
        return JSONResponse({"runs": [_run_json(r) for r in state.explorer.runs()]})

    @router.get("/runs/{ref}/leaderboard")
    def leaderboard_page(request: Request, ref: str) -> HTMLResponse:
        session = state.auth.require_read(request)
        run, info = open_run(state, ref)
        board = explore(lambda: state.explorer.leaderboard(run))
        return render(state, request, "leaderboard.html", session, ref=str(run), run=info,
                      board=board)


def _add_verdict_routes(router: APIRouter, state: UIState) -> None:
    """The pages over single verdicts: the filtered list, one answer, two runs compared."""
    @router.get("/runs/{ref}/verdicts")
    def verdicts_page(request: Request, ref: str) -> HTMLResponse:
        session = state.auth.require_read(request)
        run, info = open_run(state, ref)
        query = dict(request.query_params)
        vf = explore(lambda: VerdictFilter.from_params(query))
        page = P.integer(query, "page", 1, hi=P.MAX_PAGE)
        page_size = P.integer(query, "page_size", PAGE_SIZE, hi=P.MAX_PAGE_SIZE)
        sort = P.text(query, "sort", max_len=32) or "default"
        result = explore(lambda: state.explorer.verdicts(run, vf, page=page,
                                                         page_size=page_size, sort=sort))
        facets = explore(lambda: state.explorer.facets(run))
        return render(state, request, "verdicts.html", session, ref=str(run), run=info,
                      result=result, facets=facets, filters=vf, page_no=page, page_size=page_size,
                      sort=sort, pages=max(1, -(-result["total"] // page_size)),
                      keep=_kept(vf, page_size=page_size if page_size != PAGE_SIZE else None,
                                 sort=sort if sort != "default" else None))

    @router.get("/runs/{ref}/answers/{record_pk}")
    def answer_page(request: Request, ref: str, record_pk: str) -> HTMLResponse:
        session = state.auth.require_read(request)
        run, info = open_run(state, ref)
        pk = P.integer({"record": record_pk}, "record", 0)
        answer = explore(lambda: state.explorer.answer(run, pk), lookup=True)
        return render(state, request, "answer.html", session, ref=str(run), run=info,
                      answer=answer, record_pk=pk,
                      back=safe_next(request.query_params.get("back"), f"/ui/runs/{run}/verdicts"))

    @router.get("/compare")
    def compare_page(request: Request) -> HTMLResponse:
        session = state.auth.require_read(request)
        query = dict(request.query_params)
        runs = state.explorer.runs()
        vf = explore(lambda: VerdictFilter.from_params(query))
        a_text, b_text = P.text(query, "a", max_len=64), P.text(query, "b", max_len=64)
        result, facets = None, None
        if a_text and b_text:
            (a, _), (b, _) = open_run(state, a_text, "a"), open_run(state, b_text, "b")
            page = P.integer(query, "page", 1, hi=P.MAX_PAGE)
            result = explore(lambda: state.explorer.compare(a, b, vf, page=page,
                                                            page_size=PAGE_SIZE))
            facets = explore(lambda: state.explorer.facets(a))
        elif a_text or b_text:
            raise P.ParamError("b" if a_text else "a", "pick two runs to compare")
        return render(state, request, "compare.html", session, runs=runs, a=a_text or "", b=b_text or "",
                      filters=vf, result=result, facets=facets,
                      page_no=P.integer(query, "page", 1, hi=P.MAX_PAGE), keep=_kept(vf, a=a_text, b=b_text))


def _kept(vf: VerdictFilter, **extra: Any) -> dict[str, Any]:
    """The query parameters that links keep: the filter and `extra` (page size, sort, runs)."""
    return {**vf.to_params(), **{k: v for k, v in extra.items() if v is not None}}


def _run_json(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("ref", "judge", "jobs", "judged", "failed", "invalid", "progress", "finished")
    return {k: (str(run[k]) if k == "ref" else run.get(k)) for k in keys}


# --- reviews ---------------------------------------------------------------------------------

def _add_review_routes(router: APIRouter, state: UIState) -> None:
    @router.post("/runs/{ref}/answers/{record_pk}/review")
    async def submit_review(request: Request, ref: str, record_pk: str) -> Response:
        form = await read_form(request)
        state.auth.require_write(request, form.get("csrf"))
        if not getattr(state.explorer, "reviews_writable", False):
            raise UIError(403, "reviews are read-only here: start the UI with --writable")
        run, _ = open_run(state, ref)
        pk = P.integer({"record": record_pk}, "record", 0)
        if P.text(form, "criteria_name", max_len=500) is None:
            raise P.ParamError("criteria_name", "missing")
        criterion = form["criteria_name"]  # a key, not free text: unstripped (names may end in spaces)
        score = P.number(form, "score")
        comment = form.get("comment", "")
        reviewer = P.text(form, "reviewer", max_len=100) or "reviewer"
        explore(lambda: state.explorer.set_review(run, pk, criterion, score, comment, reviewer))
        return RedirectResponse(f"/ui/runs/{run}/answers/{pk}?reviewed=1#review-saved", status_code=303)

    @router.get("/runs/{ref}/reviews")
    def reviews_page(request: Request, ref: str) -> HTMLResponse:
        session = state.auth.require_read(request)
        run, info = open_run(state, ref)
        reviews = explore(lambda: state.explorer.reviews(run))
        return render(state, request, "reviews.html", session, ref=str(run), run=info,
                      reviews=reviews)

    @router.get("/runs/{ref}/reviews/export")
    def export_reviews(request: Request, ref: str) -> Response:
        state.auth.require_read(request)
        run, _ = open_run(state, ref)
        rows = explore(lambda: state.explorer.export_reviews(run))
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        name = f"pollux-reviews-{run}.jsonl"
        return Response(body, media_type="application/x-ndjson; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


# --- side by side (pollux compare) -----------------------------------------------------------

FLIPS_SHOWN = 50  # flipped pairs listed per comparison unless ?flips= asks for more


def _pairwise_dbs(state: UIState) -> list[Path]:
    """The run databases that also hold `pollux compare` verdicts (the nav links the page then).
    Every page (error pages too) asks: a database that cannot be read here is left out, and the
    page that reads its runs names the problem."""
    found = []
    for db in state.explorer.run_databases():
        try:
            if pw.has_judgements(db):
                found.append(db)
        except sqlite3.Error:
            continue
    return found


def _add_pairwise_routes(router: APIRouter, state: UIState) -> None:
    @router.get("/side-by-side")
    def side_by_side_page(request: Request) -> HTMLResponse:
        session = state.auth.require_read(request)
        shown = P.integer(dict(request.query_params), "flips", FLIPS_SHOWN, lo=0, hi=P.MAX_PAGE_SIZE)
        dbs = _pairwise_dbs(state)
        if not dbs:
            raise UIError(404, "no side-by-side judgements here: run pollux compare with --db on one of the "
                               "UI's run databases")
        comparisons = [_comparison(db, c, shown) for db in dbs for c in pw.stored_comparisons(db)]
        return render(state, request, "side_by_side.html", session, comparisons=comparisons)


def _comparison(db: Path, comparison: pw.StoredComparison, shown: int) -> dict[str, Any]:
    """One comparison for the page: `pw.stored_tables` (the report's and `pollux compare`'s
    numbers, the same defaults) and its flipped pairs."""
    tables = pw.stored_tables(comparison)
    flips = pw.flipped_pairs(comparison)
    return {**tables, "db": str(db), "groups": pairwise_groups(tables), "flips": flips, "shown": flips[:shown]}


# --- judge live ------------------------------------------------------------------------------

def _add_live_routes(router: APIRouter, state: UIState) -> None:
    @router.get("/live")
    def live_page(request: Request) -> HTMLResponse:
        session = state.auth.require_read(request)
        criteria = list(state.catalog.criteria.values()) if state.catalog else []
        criteria = [c for c in criteria if "__" not in c.id]  # base criteria: variants differ by domain only
        return render(state, request, "live.html", session, criteria=criteria)

    @router.post("/live")
    async def live_judge(request: Request) -> Response:
        state.auth.require_write(request, None)  # the page's script sends the CSRF token as a header
        if state.judge is None:
            raise UIError(409, "no judge is loaded: start the UI with --judge")
        item = _live_item(state, await read_body(request))
        if not state.live.take():
            raise UIError(429, f"too many live judgements in progress ({state.live.limit}, one at a time on "
                          f"this judge): try again in a few seconds",
                          headers={"Retry-After": str(LIVE_RETRY_AFTER_S)})
        return LiveResponse(_live_stream(state, item), state.live.give_back)

    @router.get("/api/live")
    def live_status(request: Request) -> JSONResponse:
        state.auth.require_read(request)
        return JSONResponse({"judge": state.judge is not None, "limit": state.live.limit,
                             "in_progress": state.live.in_progress})


class LiveResponse(StreamingResponse):
    """A live judgement's NDJSON stream. However the response ends — finished, the client gone
    (Starlette cancels the body on `http.disconnect`), or never started — the judge's stream is
    closed (so it stops generating and frees the judge) and its place among the live judgements
    is given back."""

    def __init__(self, body: AsyncGenerator[bytes, None], give_back: Callable[[], None]):
        super().__init__(body, media_type="application/x-ndjson",
                         headers={"Cache-Control": "no-store", **SECURITY_HEADERS})
        self._body, self._give_back = body, give_back

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._body.aclose()
            finally:
                self._give_back()


def _live_item(state: UIState, body: bytes) -> JudgeItem:
    """The judge item of a live request (JSON: instruction, answer, reference, criterion_id or
    criteria_name + rubrics)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UIError(400, f"request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise UIError(400, "request body must be a JSON object")
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    criterion_id = P.text(fields, "criterion_id", max_len=200)
    name, rubrics = P.text(fields, "criteria_name", max_len=500), P.text(fields, "rubrics", max_len=20_000)
    if criterion_id is not None:
        found = state.catalog.criteria.get(criterion_id) if state.catalog else None
        if found is None:
            raise P.ParamError("criterion_id", f"unknown criterion {criterion_id!r}")
        name, rubrics = found.name, found.rubrics
    if name is None or rubrics is None:
        raise P.ParamError("criteria_name" if name is None else "rubrics",
                           "choose a criterion from the taxonomy, or give a name and a rubric")
    for key in ("instruction", "answer"):
        if P.text(fields, key, max_len=100_000) is None:
            raise P.ParamError(key, "missing or empty")
    try:
        return JudgeItem(instruction=fields["instruction"], answer=fields["answer"], criteria_name=name,
                         rubrics=rubrics, reference_answer=fields.get("reference", "") or "")
    except RecordError as e:
        raise UIError(400, str(e)) from None


async def _live_stream(state: UIState, item: JudgeItem) -> AsyncGenerator[bytes, None]:
    """NDJSON lines: `{"type": "delta", "text"}` as the rationale is generated, then
    `{"type": "verdict", ...}` (or `{"type": "error", "message"}`). The judge makes one engine call
    at a time (`Judge`'s lock), so a live judgement takes turns with `/v1/judge` batches; it waits
    on the event loop (`Judge.astream`), not in a thread of the pool that serves the pages."""
    def line(obj: dict[str, Any]) -> bytes:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode()

    assert state.judge is not None  # the route answers 409 without a judge
    try:
        # aclosing: when this generator is closed at a `yield` (the client went), the judge's
        # stream is closed at once too, not whenever it is garbage-collected
        async with aclosing(state.judge.astream(item)) as parts:
            async for part in parts:
                if isinstance(part, str):
                    yield line({"type": "delta", "text": part})
                else:
                    yield line({"type": "verdict", **_verdict_json(part)})
    except Exception as e:  # the judge failed: tell the page, keep the server up
        log.exception("judge live failed")
        yield line({"type": "error", "message": f"{type(e).__name__}: {e}"})


def _verdict_json(verdict: Any) -> dict[str, Any]:
    data = verdict.to_dict()
    keys = ("score", "head_score", "text_score", "valid", "invalid_reason", "error", "rationale",
            "scale_min", "scale_max", "criteria_name", "finish_reason")
    return {k: _finite(data.get(k)) for k in keys}


def _finite(value: Any) -> Any:
    """JSON cannot carry NaN/inf: a non-finite score is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
