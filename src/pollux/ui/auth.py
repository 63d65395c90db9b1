"""Sign-in, sessions and CSRF for the web UI.

A browser cannot send the API's bearer header while it navigates pages, so the UI trades the key
once (a sign-in form) for a session cookie. The cookie holds a signed token, never the key:
`issued.nonce.mac`, where `mac` is an HMAC over `issued.nonce` with a secret derived from the key,
so a server restart with the same key keeps sessions valid and a new key voids them. The cookie
is HttpOnly (scripts cannot read it) and SameSite=Strict (other sites' requests do not carry it).

Every POST also needs a CSRF token (an HMAC of the session's nonce: one per session, sent in a
hidden field or the `X-CSRF-Token` header) and an Origin — or, without one, a Referer — equal to
the app's own origin. Either check alone stops a cross-site form; both are kept as defence in depth.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "pollux_ui_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


class AuthError(Exception):
    """A refused request: `status` 401 (not signed in) or 403 (signed in, but the request is not
    trusted: CSRF or origin), with a message that says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str


class Auth:
    """The UI's access rules. `key=None`: nobody can sign in, so nothing can be written.
    `protect_reads`: every page needs a session too (`pollux serve --ui` with a server key)."""

    def __init__(self, key: str | None, *, protect_reads: bool = False):
        self.key = key
        self.protect_reads = protect_reads and key is not None
        self._secret = hmac.new(key.encode(), b"pollux-ui-session-v1", hashlib.sha256).digest() if key else b""

    @property
    def can_sign_in(self) -> bool:
        return self.key is not None

    def check_key(self, given: str) -> bool:
        """Constant-time comparison of a submitted key with the configured one."""
        return self.key is not None and hmac.compare_digest(given.encode(), self.key.encode())

    def new_token(self) -> str:
        """A fresh session token for the cookie."""
        body = f"{int(time.time())}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._mac('session', body)}"

    def session(self, request: Request) -> Session | None:
        """The request's valid session, or None (no cookie, a forged or expired one)."""
        token = request.cookies.get(COOKIE, "")
        issued, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not self.key or not issued.isdigit() or not nonce or not mac:
            return None
        if not hmac.compare_digest(mac, self._mac("session", f"{issued}.{nonce}")):
            return None
        if time.time() - int(issued) > SESSION_SECONDS:
            return None
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
