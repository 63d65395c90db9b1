"""Criterion groups (critical / general / subjective / domain / task) for the breakdown table.

The group of a criterion comes from, in order: a `criteria_group` column in the expert data (so
any dataset can say it explicitly), the pollux taxonomy catalogue (`pollux.taxonomy`, looked up
by criterion id or name), otherwise "unknown". A missing or broken catalogue never stops a
meta-evaluation: the breakdown just says "unknown".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

UNKNOWN = "unknown"

# The taxonomy's group labels (English and Russian, as in the POLLUX files) → our short names.
_CANONICAL = {
    "critical": "critical",
    "критические": "critical",
    "general": "general",
    "fine-grained": "general",
    "общие": "general",
    "subjective": "subjective",
    "субъективные": "subjective",
    "domain": "domain",
    "domain-specific": "domain",
    "стилевые": "domain",
    "task": "task",
    "task-specific": "task",
    "задачные": "task",
}


def canonical_group(label: object) -> str:
    """'Критические' / 'Critical' / 'critical' → 'critical'; anything unrecognised is kept as is."""
    if label is None:
        return UNKNOWN
    text = str(getattr(label, "value", label)).strip()
    if not text:
        return UNKNOWN
    return _CANONICAL.get(text.lower(), text)


def _catalog_lookup() -> Callable[[str], object] | None:
    try:
        from pollux.taxonomy import load_catalog

        catalog = load_catalog()
    except Exception:  # not installed yet, or its data is missing: fall back to "unknown"
        return None
    return catalog.find


def criterion_groups(names: Iterable[str]) -> dict[str, str]:
    """Map each distinct criterion name (or id) to its group, via the taxonomy catalogue."""
    find = _catalog_lookup()
    out: dict[str, str] = {}
    for name in set(names):
        group = UNKNOWN
        if find is not None:
            try:
                criterion = find(name)
            except Exception:  # an unknown name is "unknown", not an error
                criterion = None
            if criterion is not None:
                group = canonical_group(getattr(criterion, "group", None))
        out[name] = group
    return out


def task_groups(task_types: Iterable[str]) -> dict[str, str]:
    """Map each distinct task type to its task group's (Russian) name in the taxonomy (the 8 task
    groups); "unknown" for a task type the catalogue does not know — never an error."""
    try:
        from pollux.taxonomy import load_catalog

        catalog = load_catalog()
    except Exception:  # no catalogue: every task type is "unknown"
        return dict.fromkeys(set(task_types), UNKNOWN)
    out: dict[str, str] = {}
    for task in set(task_types):
        try:
            out[task] = str(catalog.task_group(task)) if task else UNKNOWN
        except Exception:  # an unknown task type
            out[task] = UNKNOWN
    return out
