"""Sign-in, sessions and CSRF for the web UI.

A browser cannot send the API's bearer header while it navigates pages, so the UI trades the key
once (a sign-in form) for a session cookie. The cookie holds a signed token, never the key:
`issued.nonce.mac`, where `mac` is an HMAC over `issued.nonce` with a secret derived from the key.
A signed token alone cannot be taken back, so the server also keeps a table of the sessions it
issued (in memory): sign-out deletes the session there and its cookie and CSRF token are void at
once; a restart signs everyone out. The cookie is HttpOnly (scripts cannot read it) and
SameSite=Strict (other sites' requests do not carry it).

Wrong keys are throttled (`SignInThrottle`): a budget of failures per client and one for all
clients together; beyond either, sign-in is a 429 and the key is not checked (a check that
answered would let the guessing go on). A request that already carries a valid session has
proved the key, so it is never throttled.

Every POST also needs a CSRF token (an HMAC of the session's nonce: one per session, sent in a
hidden field or the `X-CSRF-Token` header) and an Origin — or, without one, a Referer — equal to
the app's own origin. Either check alone stops a cross-site form; both are kept as defence in depth.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "pollux_ui_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000  # sessions kept at once; beyond, the oldest is signed out


class AuthError(Exception):
    """A refused request: `status` 401 (not signed in), 403 (signed in, but the request is not
    trusted: CSRF or origin; or a wrong key) or 429 (sign-in throttled; `retry_after` seconds),
    with a message that says what to do."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str


@dataclass
class _Bucket:
    """A token bucket of failures: `tokens` left, refilled continuously up to the burst."""
    tokens: float
    at: float


@dataclass
class SignInThrottle:
    """Budgets of wrong keys: `per_client_burst` failures per client address, refilled one per
    `per_client_refill_s`; `global_burst` for all clients together, one per `global_refill_s`.
    Only failures spend the budget, so a user who types the key right costs nothing."""

    per_client_burst: int = 5
    per_client_refill_s: float = 12.0  # 5 wrong keys a minute per client
    global_burst: int = 20
    global_refill_s: float = 3.0  # 20 a minute from everyone: 28,800 guesses a day at most
    max_clients: int = 10_000
    _clients: dict[str, _Bucket] = field(default_factory=dict, repr=False)
    _global: _Bucket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wait_s(self, client: str) -> int:
        """0 when `client` may try a key now, else the seconds until it may (for Retry-After)."""
        now = time.monotonic()
        with self._lock:
            mine = self._refilled(self._clients.get(client), self.per_client_burst, self.per_client_refill_s, now)
            every = self._refilled(self._global, self.global_burst, self.global_refill_s, now)
        waits = [(1 - b.tokens) * refill for b, refill in ((mine, self.per_client_refill_s),
                                                           (every, self.global_refill_s)) if b.tokens < 1]
        return math.ceil(max(waits)) if waits else 0

    def failed(self, client: str) -> None:
        """Spend one failure from `client`'s budget and the global one."""
        now = time.monotonic()
        with self._lock:
            mine = self._refilled(self._clients.pop(client, None), self.per_client_burst,
                                  self.per_client_refill_s, now)
            mine.tokens -= 1
            self._clients[client] = mine  # most recent last: the oldest are forgotten first
            while len(self._clients) > self.max_clients:
                del self._clients[next(iter(self._clients))]
            self._global = self._refilled(self._global, self.global_burst, self.global_refill_s, now)
            self._global.tokens -= 1

    @staticmethod
    def _refilled(bucket: _Bucket | None, burst: int, refill_s: float, now: float) -> _Bucket:
        if bucket is None:
            return _Bucket(float(burst), now)
        return _Bucket(min(float(burst), bucket.tokens + (now - bucket.at) / refill_s), now)


class Auth:
    """The UI's access rules. `key=None`: nobody can sign in, so nothing can be written.
    `protect_reads`: every page needs a session too (`pollux serve --ui` with a server key)."""

    def __init__(self, key: str | None, *, protect_reads: bool = False, throttle: SignInThrottle | None = None):
        self.key = key
        self.protect_reads = protect_reads and key is not None
        self.throttle = throttle or SignInThrottle()
        self._secret = hmac.new(key.encode(), b"pollux-ui-session-v1", hashlib.sha256).digest() if key else b""
        self._sessions: dict[str, float] = {}  # nonce → when issued: the sessions not signed out
        self._sessions_lock = threading.Lock()

    @property
    def can_sign_in(self) -> bool:
        return self.key is not None

    def check_key(self, given: str) -> bool:
        """Constant-time comparison of a submitted key with the configured one."""
        return self.key is not None and hmac.compare_digest(given.encode(), self.key.encode())

    def sign_in(self, request: Request, given: str) -> str:
        """A new session token for the cookie when `given` is the key; AuthError 403 when it is
        not, 429 (with `retry_after`) when this client or everyone has failed too often lately.
        A request with a valid session is not throttled: it has shown the key already."""
        client = request.client.host if request.client else "?"
        if self.session(request) is None:
            wait = self.throttle.wait_s(client)
            if wait:
                raise AuthError(429, f"too many wrong keys: sign-in is paused, try again in {wait} s",
                                retry_after=wait)
        if not self.check_key(given):
            self.throttle.failed(client)
            raise AuthError(403, "wrong key")
        return self.new_token()

    def new_token(self) -> str:
        """A fresh session token for the cookie, recorded as a live session."""
        issued, nonce = int(time.time()), secrets.token_urlsafe(18)
        with self._sessions_lock:
            self._forget_expired(issued)
            self._sessions[nonce] = issued
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        body = f"{issued}.{nonce}"
        return f"{body}.{self._mac('session', body)}"

    def sign_out(self, session: Session) -> None:
        """Revoke `session`: its cookie and CSRF token are refused from now on."""
        with self._sessions_lock:
            self._sessions.pop(session.nonce, None)

    def _forget_expired(self, now: float) -> None:
        for nonce, issued in list(self._sessions.items()):
            if now - issued <= SESSION_SECONDS:
                break  # in order of issue: the rest are younger
            del self._sessions[nonce]

    def session(self, request: Request) -> Session | None:
        """The request's valid session, or None (no cookie, a forged or expired one)."""
        token = request.cookies.get(COOKIE, "")
        issued, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not self.key or not issued.isdigit() or not nonce or not mac:
            return None
        if not hmac.compare_digest(mac, self._mac("session", f"{issued}.{nonce}")):
            return None
        if time.time() - int(issued) > SESSION_SECONDS or nonce not in self._sessions:
            return None  # expired, or signed out (or issued before a restart)
        return Session(nonce=nonce, csrf=self._mac("csrf", nonce))

    def require_read(self, request: Request) -> Session | None:
        """Raise 401 when pages need a session and there is none; return the session if any."""
        session = self.session(request)
        if self.protect_reads and session is None:
            raise AuthError(401, "sign in with the server's key to see this page")
        return session

    def require_write(self, request: Request, csrf: str | None) -> Session:
        """Everything a write must carry: same origin, a session, and that session's CSRF token."""
        check_origin(request)
        session = self.session(request)
        if session is None:
            why = "this UI is read-only: it was started without a key" if not self.key else \
                "sign in with the key first (your session is missing or expired)"
            raise AuthError(401, why)
        given = csrf or request.headers.get(CSRF_HEADER) or ""
        if not given:
            raise AuthError(403, "missing CSRF token: reload the page and submit the form again")
        if not hmac.compare_digest(given, session.csrf):
            raise AuthError(403, "invalid CSRF token: reload the page and submit the form again")
        return session

    def _mac(self, purpose: str, body: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{body}".encode(), hashlib.sha256).hexdigest()


def own_origin(request: Request) -> str:
    """The origin the browser used to reach this app (scheme and Host header)."""
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def check_origin(request: Request) -> None:
    """Refuse a POST whose Origin (or, when a browser sends none, Referer) is another site."""
    expected = own_origin(request)
    origin = request.headers.get("origin")
    if origin is not None:
        if origin != expected:
            raise AuthError(403, f"cross-origin request refused: Origin {origin!r} is not {expected!r}")
        return
    referer = request.headers.get("referer")
    if referer is None:
        raise AuthError(403, "request refused: it carries neither an Origin nor a Referer header")
    parts = urlsplit(referer)
    if f"{parts.scheme}://{parts.netloc}" != expected:
        raise AuthError(403, f"cross-origin request refused: Referer is not on {expected!r}")


def safe_next(target: str | None, default: str = "/ui/") -> str:
    """A redirect target after sign-in: only a path of this UI (never another site)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return default
