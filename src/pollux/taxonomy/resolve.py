"""Criteria sets: which criteria (name + rubric) one record is judged on.

A record may bring its criteria itself, name its task, or neither; the first source that is
present wins, in this order:

1. `record["criteria"]` — a list of `{criteria_name, rubrics}` as in POLLUX-instructions (also a
   JSON string of that list, or entries that are just a criterion id or name);
2. `record["criteria_name"]` (+ `record["rubrics"]`) — one criterion, as in a POLLUX dataset row;
3. `record["task_type"]` (+ `task_subtype`, `task_subsubtype`) — the task tree's ordered list;
4. `user_criteria` — a criteria file the user passed (see `load_user_criteria`);

otherwise the record has no criteria, which is an error naming what to give.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollux.scales import Scale, parse_scale
from pollux.taxonomy.catalog import Catalog, Criterion, TaskNode, format_rubrics, is_blank
from pollux.taxonomy.errors import TaxonomyError
from pollux.taxonomy.names import suggest


@dataclass(frozen=True)
class CriterionSpec:
    """A criterion as a judge prompt needs it: the name and the rubric text, plus what the catalog
    knows about it (id, group, scale) — None when the record brought a criterion of its own."""

    name: str
    rubrics: str
    criterion_id: str | None = None
    group: str | None = None
    scale: Scale | None = None

    @classmethod
    def from_criterion(cls, criterion: Criterion) -> CriterionSpec:
        return cls(name=criterion.name, rubrics=criterion.rubrics, criterion_id=criterion.id,
                   group=criterion.group, scale=criterion.scale)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criteria_name": self.name,
            "rubrics": self.rubrics,
            "criterion_id": self.criterion_id,
            "group": self.group,
            "scale": None if self.scale is None else [self.scale.min, self.scale.max],
        }


def resolve_criteria(record: Mapping[str, Any], catalog: Catalog,
                     user_criteria: list[CriterionSpec] | None = None) -> list[CriterionSpec]:
    """The record's criteria set, in judging order (see the module docstring for the sources)."""
    leaf = _leaf_or_none(record, catalog)
    own = record.get("criteria")
    if not _empty(own):
        entries = _as_list(own, "field 'criteria'")
        return [_spec_from_entry(entry, catalog, leaf, f"criteria[{i}]") for i, entry in enumerate(entries)]
    if not is_blank(record.get("criteria_name")):
        return [_spec_from_entry({"criteria_name": record["criteria_name"], "rubrics": record.get("rubrics")},
                                 catalog, leaf, "field 'criteria_name'")]
    if not is_blank(record.get("task_type")):
        criteria = catalog.criteria_for_task(record["task_type"], record.get("task_subtype"),
                                             record.get("task_subsubtype"))
        return [CriterionSpec.from_criterion(c) for c in criteria]
    if user_criteria:
        return list(user_criteria)
    raise TaxonomyError(
        "record has no criteria: give 'criteria' (a list of {criteria_name, rubrics}), "
        "'criteria_name' + 'rubrics', a 'task_type' (with task_subtype / task_subsubtype) "
        "from the task tree, or a criteria file"
    )


def load_user_criteria(path: str | Path, catalog: Catalog | None = None) -> list[CriterionSpec]:
    """A user's criteria file: a JSON list whose entries are `{criteria_name, rubrics}` objects,
    criterion ids, or catalog names (also `{"criteria": [...]}`). Ids are checked against
    `catalog` (the built-in one by default); an unknown id is a TaxonomyError naming the entry."""
    if catalog is None:
        from pollux.taxonomy.official import load_catalog

        catalog = load_catalog()
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaxonomyError(f"criteria file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise TaxonomyError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, Mapping) and "criteria" in data:
        data = data["criteria"]
    if not isinstance(data, list) or not data:
        raise TaxonomyError(f"{path}: expected a non-empty JSON list of criteria "
                            "({criteria_name, rubrics} objects or criterion ids)")
    specs = []
    for i, entry in enumerate(data):
        try:
            specs.append(_spec_from_entry(entry, catalog, None, f"entry {i}"))
        except TaxonomyError as e:
            raise TaxonomyError(f"{path}: {e}") from None
    return specs


def _spec_from_entry(entry: Any, catalog: Catalog, leaf: TaskNode | None, where: str) -> CriterionSpec:
    """One criterion from a record / user file: an id or name string, or a {criteria_name, rubrics} object."""
    if isinstance(entry, str):
        known = _lookup(entry, catalog, leaf)
        if known is None:
            raise TaxonomyError(f"{where}: unknown criterion {entry!r}{suggest(entry, _all_names(catalog))}")
        return CriterionSpec.from_criterion(known)
    if not isinstance(entry, Mapping):
        raise TaxonomyError(f"{where}: expected a criterion id or a {{criteria_name, rubrics}} object, "
                            f"got {type(entry).__name__}")
    cid = entry.get("criterion_id") or entry.get("id")
    given_name = entry.get("criteria_name") or entry.get("name")
    found: Criterion | None
    if not is_blank(cid):
        try:
            found = catalog.criterion(str(cid))
        except TaxonomyError as e:  # an unknown id is an error, never a silent free-text criterion
            raise TaxonomyError(f"{where}: {e}") from None
        name = found.name if is_blank(given_name) else str(given_name)
    elif isinstance(given_name, str) and not is_blank(given_name):
        name = given_name
        found = _lookup(name, catalog, leaf)
    else:
        raise TaxonomyError(f"{where}: the criterion has no 'criteria_name'")
    rubrics = _rubrics_text(entry.get("rubrics"), where)
    if rubrics is None:
        if found is None:
            raise TaxonomyError(f"{where}: criterion {name!r} has no 'rubrics' and is not in the catalog"
                                f"{suggest(name, _all_names(catalog))}")
        return CriterionSpec.from_criterion(found)
    return CriterionSpec(
        name=name,
        rubrics=rubrics,
        criterion_id=found.id if found else None,
        group=found.group if found else None,
        scale=parse_scale(rubrics),
    )


def _lookup(name: str, catalog: Catalog, leaf: TaskNode | None) -> Criterion | None:
    """A name's catalog entry; within the record's task leaf first, so that a shared name
    ("Правильность ответа") finds the variant this task actually uses."""
    return catalog.find_in_task(leaf, name) if leaf is not None else catalog.find(name)


def _leaf_or_none(record: Mapping[str, Any], catalog: Catalog) -> TaskNode | None:
    """The record's task leaf when it names one that exists; only a hint for finding variants."""
    if is_blank(record.get("task_type")):
        return None
    try:
        return catalog.task(record["task_type"], record.get("task_subtype"), record.get("task_subsubtype"))
    except TaxonomyError:
        return None


def _rubrics_text(value: Any, where: str) -> str | None:
    """Rubrics as the judge reads them; a dict of levels becomes "0: …\\n\\n1: …"."""
    if is_blank(value):
        return None
    if isinstance(value, Mapping):
        try:
            items = sorted(value.items(), key=lambda kv: float(str(kv[0]).replace(",", ".")))
        except ValueError:
            raise TaxonomyError(f"{where}: rubric levels must be numbers, got {list(value)}") from None
        return format_rubrics((str(k), str(v)) for k, v in items)
    if not isinstance(value, str):
        raise TaxonomyError(f"{where}: 'rubrics' must be a string or a dict of levels, got {type(value).__name__}")
    return value


def _as_list(value: Any, where: str) -> list[Any]:
    """A criteria list from a list, a numpy array / pyarrow list (parquet), or a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise TaxonomyError(f"{where}: not a JSON list of criteria ({e.msg} at column {e.colno})") from None
        if isinstance(value, Mapping):
            value = [value]
    elif isinstance(value, Mapping):
        value = [value]
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, Iterable) or isinstance(value, str):
        raise TaxonomyError(f"{where}: expected a list of criteria, got {type(value).__name__}")
    return list(value)


def _empty(value: Any) -> bool:
    if is_blank(value):
        return True
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    size = getattr(value, "size", None)  # numpy arrays
    return size == 0 if isinstance(size, int) else False


def _all_names(catalog: Catalog) -> list[str]:
    return [*catalog.criteria, *{c.name for c in catalog.criteria.values()}]
