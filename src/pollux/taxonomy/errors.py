"""The one error the taxonomy raises."""

from __future__ import annotations


class TaxonomyError(KeyError, ValueError):
    """An unknown task, subtask or criterion, or a malformed taxonomy / criteria file.

    It is a KeyError (a lookup by id or name failed) and a ValueError (bad user input), so callers
    can catch whichever fits. Unlike a plain KeyError its text is shown as written, not quoted.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
