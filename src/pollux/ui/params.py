"""Query-string and form parameters of the web UI, read by hand so that a bad value is a 400
naming the parameter (FastAPI's own validation would answer with a 422 list shaped for APIs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

from pollux.records import text_problem

MAX_PAGE_SIZE = 500
SQLITE_INT_MAX = 2**63 - 1  # SQLite's integers are signed 64-bit: a larger id or offset is an error there
MAX_PAGE = SQLITE_INT_MAX // MAX_PAGE_SIZE  # so that a page's row offset fits too


class ParamError(ValueError):
    """A bad query or form parameter: 400 with a message naming it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter {name!r}: {message}")
        self.name = name


def text(params: Mapping[str, str], name: str, *, max_len: int = 2000) -> str | None:
    """An optional text parameter: None when absent or blank."""
    value = params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > max_len:
        raise ParamError(name, f"longer than {max_len} characters")
    problem = text_problem(value)
    if problem is not None:
        raise ParamError(name, problem)
    return value.strip()


def number(params: Mapping[str, str], name: str) -> float | None:
    """An optional finite number."""
    value = text(params, name, max_len=64)
    if value is None:
        return None
    try:
        result = float(value.replace(",", "."))
    except ValueError:
        raise ParamError(name, f"expected a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ParamError(name, f"expected a finite number, got {value!r}")
    return result


def integer(params: Mapping[str, str], name: str, default: int, *, lo: int = 1, hi: int = SQLITE_INT_MAX) -> int:
    """An optional integer in [lo, hi]; `hi` is at most SQLite's largest integer, which every
    number from a URL ends up compared with."""
    value = text(params, name, max_len=32)
    if value is None:
        return default
    try:
        result = int(value)
    except ValueError:
        raise ParamError(name, f"expected an integer, got {value!r}") from None
    hi = min(hi, SQLITE_INT_MAX)
    if result < lo or result > hi:
        raise ParamError(name, f"must be between {lo} and {hi}")
    return result


def query_string(params: Mapping[str, Any], **override: Any) -> str:
    """`params` with `override` applied, as a query string without empty values: links keep the
    current filter and change one thing (the page, the sort)."""
    merged = {**params, **override}
    return urlencode({k: v for k, v in merged.items() if v is not None and v != ""})


def parse_form(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the last value of a repeated field)."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError("body", "form data is not UTF-8") from None
    return {k: v[-1] for k, v in parse_qs(decoded, keep_blank_values=True).items()}
