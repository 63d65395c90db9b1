"""Reading the POLLUX `metainfo/` layout (`criteria.json` + `tasks.json`) into a `Catalog`.

Users who have the official files get the official rubric wording by pointing `load_catalog` at
that folder. Our built-in catalog (src/pollux/data/taxonomy/) is written in the same layout with
our own Russian rubrics, so one reader serves both and the built-in data is checked by the same
rules as the official files.

Layout (see docs/taxonomy.md): `criteria.json` maps criterion id → {name, desc, scale{en,ru},
crit_group, domain, task, subtask1, subtask2}; `tasks.json` maps task-group key → {name, desc,
tasks{key → NODE}}, a NODE being a leaf (`criteria`, `has_gold`, `complexity`, `domain`) or
holding children under `subtasks_l1` / `subtasks_l2`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pollux.scales import Scale, to_number
from pollux.taxonomy.catalog import (
    CRITERIA_GROUPS,
    DOMAINS,
    Catalog,
    Criterion,
    TaskGroup,
    TaskNode,
    mapping_text,
)
from pollux.taxonomy.errors import TaxonomyError
from pollux.taxonomy.names import norm

BUILTIN = "built-in"
_CHILD_KEYS = ("subtasks_l1", "subtasks_l2", "subtasks_l3", "subtasks")

# Every spelling of a criterion group seen in the official files (English and Russian).
_GROUP_BY_NAME = {norm(ru): gid for gid, (ru, _en) in CRITERIA_GROUPS.items()}
_GROUP_BY_NAME.update({norm(en): gid for gid, (_ru, en) in CRITERIA_GROUPS.items()})
_GROUP_BY_NAME.update({"fine-grained": "general", "domain specific": "domain", "task specific": "task"})
_DOMAIN_BY_NAME = {norm(en): did for did, (_ru, en) in DOMAINS.items()}


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The built-in catalog (our Russian rubrics), or the one in a folder of official files.

    `path` may be the folder holding `criteria.json` and `tasks.json`, either of those files, or
    a clone of the POLLUX code base (its `metainfo/` subfolder is used).
    """
    if path is None:
        return _builtin()
    folder = _find_folder(Path(path))
    return read_catalog(folder, source=str(folder))


@functools.lru_cache(maxsize=1)
def _builtin() -> Catalog:
    folder = resources.files("pollux") / "data" / "taxonomy"
    with resources.as_file(folder) as real:
        return read_catalog(Path(real), source=BUILTIN)


def _find_folder(path: Path) -> Path:
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise TaxonomyError(f"taxonomy folder {str(path)!r} does not exist")
    for candidate in (path, path / "metainfo"):
        if (candidate / "criteria.json").is_file() and (candidate / "tasks.json").is_file():
            return candidate
    raise TaxonomyError(f"{str(path)!r} holds no criteria.json + tasks.json (the POLLUX metainfo layout)")


def read_catalog(folder: Path, source: str) -> Catalog:
    criteria_raw = _read_json(folder / "criteria.json")
    tasks_raw = _read_json(folder / "tasks.json")
    if not isinstance(criteria_raw, Mapping):
        raise TaxonomyError(f"{folder / 'criteria.json'}: expected an object keyed by criterion id")
    if not isinstance(tasks_raw, Mapping):
        raise TaxonomyError(f"{folder / 'tasks.json'}: expected an object keyed by task group")
    criteria = [_criterion(cid, entry, folder / "criteria.json") for cid, entry in criteria_raw.items()]
    groups = [_group(key, entry, folder / "tasks.json") for key, entry in tasks_raw.items()]
    return Catalog(criteria, groups, source=source)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaxonomyError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _criterion(cid: str, entry: Any, where: Path) -> Criterion:
    if not isinstance(entry, Mapping):
        raise TaxonomyError(f"{where}: criterion {cid!r} is not an object")
    scale_raw = entry.get("scale") or {}
    levels_raw = scale_raw.get("ru") or scale_raw.get("en") if isinstance(scale_raw, Mapping) else None
    if not isinstance(levels_raw, Mapping) or len(levels_raw) < 2:
        raise TaxonomyError(f"{where}: criterion {cid!r} has no scale levels (scale.ru / scale.en)")
    try:
        levels = sorted(((to_number(str(k)), str(k), str(v)) for k, v in levels_raw.items()))
    except ValueError:
        raise TaxonomyError(f"{where}: criterion {cid!r} has a non-numeric scale level in "
                            f"{list(levels_raw)}") from None
    values = tuple(v for v, _, _ in levels)
    group_name = mapping_text(entry.get("crit_group"), "en")
    group = _GROUP_BY_NAME.get(norm(group_name)) or _GROUP_BY_NAME.get(
        norm(mapping_text(entry.get("crit_group"), "ru")))
    if group is None:
        raise TaxonomyError(f"{where}: criterion {cid!r} has an unknown group {group_name!r}; "
                            f"known: {', '.join(en for _ru, en in CRITERIA_GROUPS.values())}")
    domain_en = mapping_text(entry.get("domain"), "en")
    name = mapping_text(entry.get("name"), "ru")
    if not name.strip():
        raise TaxonomyError(f"{where}: criterion {cid!r} has no name")
    return Criterion(
        id=cid,
        name=name,
        name_en=mapping_text(entry.get("name"), "en"),
        group=group,
        domain=_DOMAIN_BY_NAME.get(norm(domain_en), domain_en or "general"),
        scale=Scale(min=values[0], max=values[-1], levels=values),
        levels=tuple((label, text) for _, label, text in levels),
        description=mapping_text(entry.get("desc"), "ru"),
    )


def _group(key: str, entry: Any, where: Path) -> TaskGroup:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("tasks"), Mapping):
        raise TaxonomyError(f"{where}: task group {key!r} has no 'tasks' object")
    name = mapping_text(entry.get("name"), "ru") or key
    tasks = tuple(_node(k, v, name, (), where) for k, v in entry["tasks"].items())
    return TaskGroup(key=key, name=name, name_en=mapping_text(entry.get("name"), "en") or key, tasks=tasks)


def _node(key: str, entry: Any, group: str, parent: tuple[str, ...], where: Path) -> TaskNode:
    if not isinstance(entry, Mapping):
        raise TaxonomyError(f"{where}: task {' / '.join((*parent, key))!r} is not an object")
    name = mapping_text(entry.get("name"), "ru") or key
    path = (*parent, name)
    children_raw = next((entry[k] for k in _CHILD_KEYS if isinstance(entry.get(k), Mapping)), None)
    criteria = entry.get("criteria")
    if criteria is None and children_raw is None:
        raise TaxonomyError(f"{where}: task {' / '.join(path)!r} has neither 'criteria' nor subtasks")
    if criteria is not None and (not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria)):
        raise TaxonomyError(f"{where}: task {' / '.join(path)!r}: 'criteria' must be a list of ids")
    children = tuple(_node(k, v, group, path, where) for k, v in (children_raw or {}).items())
    complexity = entry.get("complexity") or ()
    return TaskNode(
        key=key,
        name=name,
        name_en=mapping_text(entry.get("name"), "en") or key,
        group=group,
        path=path,
        criteria=tuple(criteria) if criteria is not None else None,
        has_gold=entry.get("has_gold"),
        domain=_DOMAIN_BY_NAME.get(norm(mapping_text(entry.get("domain"), "en"))) if entry.get("domain") else None,
        complexity=tuple(complexity),
        children=children,
    )
