"""Name matching shared by criterion and task look-ups.

Dataset columns, user files and the official files spell the same Russian name with different
case, spacing or `ё`/`е`; a look-up should not fail over that. Close-match suggestions make the
errors for genuine typos actionable.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def norm(text: str) -> str:
    """Case-, whitespace- and ё-insensitive form of a name."""
    return " ".join(str(text).replace("ё", "е").replace("Ё", "Е").casefold().split())


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to `n` candidates that look like `name` (by normalised spelling), best first."""
    by_norm: dict[str, str] = {}
    for c in candidates:
        by_norm.setdefault(norm(c), c)
    hits = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.5)
    return [by_norm[h] for h in hits]


def suggest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean: a, b?)' or '' — appended to error messages."""
    hits = close_matches(name, candidates)
    return f" (did you mean: {', '.join(repr(h) for h in hits)}?)" if hits else ""
