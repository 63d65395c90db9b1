"""The POLLUX criteria taxonomy: criteria catalog, task tree and per-record criteria sets.

    from pollux.taxonomy import load_catalog, resolve_criteria
    catalog = load_catalog()                     # built-in: our own Russian rubrics
    catalog = load_catalog("/path/to/metainfo")  # official criteria.json + tasks.json
    catalog.criteria_for_task("Стайл-трансфер", "Перепиши в стиле (задаём писателя)")
    resolve_criteria({"task_type": "Дать совет"}, catalog)

See docs/taxonomy.md.
"""

from __future__ import annotations

from pollux.taxonomy.catalog import (
    CRITERIA_GROUPS,
    DOMAINS,
    Catalog,
    Criterion,
    TaskGroup,
    TaskNode,
    format_rubrics,
)
from pollux.taxonomy.errors import TaxonomyError
from pollux.taxonomy.official import load_catalog
from pollux.taxonomy.resolve import CriterionSpec, load_user_criteria, resolve_criteria

__all__ = [
    "CRITERIA_GROUPS",
    "DOMAINS",
    "Catalog",
    "Criterion",
    "CriterionSpec",
    "TaskGroup",
    "TaskNode",
    "TaxonomyError",
    "format_rubrics",
    "load_catalog",
    "load_user_criteria",
    "resolve_criteria",
]
