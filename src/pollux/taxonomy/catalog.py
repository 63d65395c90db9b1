"""The criteria catalog and the task tree: what a POLLUX criterion is and which criteria a task gets.

POLLUX evaluates every answer against a fixed, ordered criteria set chosen by the task the
instruction belongs to: critical + general + subjective criteria for every task, plus the
domain-specific block of the text's functional style and the task's own criteria. A `Catalog`
holds both halves — the criteria (by id) and the task tree (task group → task type → subtype →
subsubtype) — and answers the two questions evaluation needs: "what is criterion X" and "which
criteria does task Y get". Reading files into a `Catalog` lives in `pollux.taxonomy.official`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pollux.scales import Scale
from pollux.taxonomy.errors import TaxonomyError
from pollux.taxonomy.names import norm, suggest

# Criterion groups: our id → (Russian name, English name). The official files call "general"
# criteria "Fine-grained"; both spellings are accepted when reading them.
CRITERIA_GROUPS: dict[str, tuple[str, str]] = {
    "critical": ("Критические", "Critical"),
    "general": ("Общие", "General"),
    "subjective": ("Субъективные", "Subjective"),
    "domain": ("Стилевые", "Domain-specific"),
    "task": ("Задачные", "Task-specific"),
}

# Functional styles (domains): our id → (Russian name, English name as in the official files).
DOMAINS: dict[str, tuple[str, str]] = {
    "general": ("Общее", "General-purpose"),
    "literary": ("Художественный текст", "Literary text"),
    "scientific": ("Научный текст", "Scientific text"),
    "official": ("Официально-деловой текст", "Official text"),
    "journalistic": ("Публицистический текст", "Journalistic text"),
    "conversational": ("Разговорный", "Conversational"),
}


def format_rubrics(levels: Iterable[tuple[str, str]]) -> str:
    """Levels → the judge's rubric string, one paragraph per level: "0: …\\n\\n1: …".

    A level text that already starts with its own number ("2 — …") is kept as written, so that
    official files in either spelling give one marker per level.
    """
    paragraphs = []
    for label, text in levels:
        body = " ".join(str(text).split())
        if re.match(rf"^{re.escape(str(label))}\s*[:—–-]", body):
            paragraphs.append(body)
        else:
            paragraphs.append(f"{label}: {body}")
    return "\n\n".join(paragraphs)


@dataclass(frozen=True)
class Criterion:
    """One criterion entry: a base criterion or one of its per-domain / per-task variants (`id__N`)."""

    id: str
    name: str  # Russian name, as it appears in the judge prompt and in the POLLUX dataset
    name_en: str
    group: str  # one of CRITERIA_GROUPS
    domain: str  # one of DOMAINS (or the file's own English domain name when it is not one of them)
    scale: Scale
    levels: tuple[tuple[str, str], ...]  # (level label, Russian level text), in scale order
    description: str = ""

    @property
    def base_id(self) -> str:
        """"creativity__3" → "creativity": variants of one criterion share a base id."""
        return self.id.split("__", 1)[0]

    @property
    def is_binary(self) -> bool:
        return self.scale.is_binary

    @property
    def rubrics(self) -> str:
        return format_rubrics(self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "base_id": self.base_id,
            "name": self.name,
            "name_en": self.name_en,
            "group": self.group,
            "domain": self.domain,
            "scale": [self.scale.min, self.scale.max],
            "levels": list(self.scale.levels),
            "is_binary": self.is_binary,
            "description": self.description,
            "rubrics": self.rubrics,
        }


@dataclass(frozen=True)
class TaskNode:
    """A node of the task tree. Leaves carry the ordered criteria list; inner nodes have children."""

    key: str
    name: str  # Russian name: the dataset's task_type / task_subtype / task_subsubtype value
    name_en: str
    group: str  # Russian name of the task group (the POLLUX-instructions `meta` value)
    path: tuple[str, ...]  # Russian names from the task type down to this node
    criteria: tuple[str, ...] | None = None
    has_gold: bool | None = None
    domain: str | None = None
    complexity: tuple[str, ...] = ()
    children: tuple[TaskNode, ...] = field(default=(), repr=False)

    @property
    def is_leaf(self) -> bool:
        return self.criteria is not None

    def iter_leaves(self) -> Iterator[TaskNode]:
        if self.is_leaf:
            yield self
        for child in self.children:
            yield from child.iter_leaves()

    def matches(self, name: str) -> bool:
        wanted = norm(name)
        return wanted in (norm(self.name), norm(self.name_en), norm(self.key))

    def to_dict(self) -> dict[str, Any]:
        """A leaf as a flat row, with the dataset's column names."""
        path = [*self.path, None, None][:3]
        return {
            "group": self.group,
            "task_type": path[0],
            "task_subtype": path[1],
            "task_subsubtype": path[2],
            "has_gold": self.has_gold,
            "domain": self.domain,
            "criteria": list(self.criteria or ()),
        }


@dataclass(frozen=True)
class TaskGroup:
    """One of the task groups (the `meta` of POLLUX-instructions), holding its task types."""

    key: str
    name: str
    name_en: str
    tasks: tuple[TaskNode, ...]


class Catalog:
    """Criteria by id plus the task tree. Build it with `load_catalog()`; treat it as read-only.

    * `criteria`: dict id → Criterion, in file order.
    * `groups`: tuple of TaskGroup (the task groups, 8 in POLLUX).
    * `tasks`: dict Russian task-type name → TaskNode (35 in POLLUX).
    * `criteria_groups`: CRITERIA_GROUPS (the five criterion groups).
    * `source`: "built-in" or the folder the official files were read from.
    """

    criteria_groups = CRITERIA_GROUPS

    def __init__(self, criteria: Sequence[Criterion], groups: Sequence[TaskGroup], source: str) -> None:
        self.criteria: dict[str, Criterion] = {}
        for c in criteria:
            if c.id in self.criteria:
                raise TaxonomyError(f"{source}: criterion id {c.id!r} is defined twice")
            self.criteria[c.id] = c
        self.groups: tuple[TaskGroup, ...] = tuple(groups)
        self.tasks: dict[str, TaskNode] = {}
        for g in self.groups:
            for t in g.tasks:
                if t.name in self.tasks:
                    raise TaxonomyError(f"{source}: task type {t.name!r} appears twice in the task tree")
                self.tasks[t.name] = t
        self.source = source
        self._leaf_index: dict[tuple[str, ...], dict[str, Criterion]] = {}
        self._by_name: dict[str, list[str]] = {}
        for c in self.criteria.values():
            for key in {norm(c.name), norm(c.name_en)}:
                self._by_name.setdefault(key, []).append(c.id)
        # Base entries first, so that a name shared by variants finds the base criterion.
        for ids in self._by_name.values():
            ids.sort(key=lambda i: "__" in i)
        for leaf in self.leaves():
            for cid in leaf.criteria or ():
                if cid not in self.criteria:
                    raise TaxonomyError(
                        f"{source}: task {' / '.join(leaf.path)!r} uses unknown criterion id {cid!r}"
                    )

    def __repr__(self) -> str:
        return (f"Catalog(source={self.source!r}, criteria={len(self.criteria)}, "
                f"task_groups={len(self.groups)}, task_types={len(self.tasks)})")

    # --- criteria -------------------------------------------------------------------------
    def criterion(self, criterion_id: str) -> Criterion:
        """The criterion with this id; TaxonomyError (with close ids) when there is none."""
        try:
            return self.criteria[criterion_id]
        except (KeyError, TypeError):
            raise TaxonomyError(
                f"unknown criterion id {criterion_id!r}{suggest(str(criterion_id), self.criteria)}"
            ) from None

    def find(self, name_or_id: str) -> Criterion | None:
        """The criterion with this id, Russian or English name (case/spacing-insensitive), or None.

        Several variants share one name ("Правильность ответа" has 33); a name finds the base
        entry when there is one, else the first variant. Use `criteria_for_task` to get the
        variant a particular task uses.
        """
        if not isinstance(name_or_id, str):
            return None
        if name_or_id in self.criteria:
            return self.criteria[name_or_id]
        ids = self._by_name.get(norm(name_or_id))
        return self.criteria[ids[0]] if ids else None

    def find_in_task(self, leaf: TaskNode, name_or_id: str) -> Criterion | None:
        """Like `find`, but a name the leaf's criteria list uses finds that leaf's variant
        ("Правильность ответа" in «Отредактировать текст» → correct_answer__5)."""
        index = self._leaf_index.get(leaf.path)
        if index is None:
            index = {}
            for cid in reversed(leaf.criteria or ()):  # the first entry with a name wins
                c = self.criteria[cid]
                index.update({norm(c.id): c, norm(c.name): c, norm(c.name_en): c})
            self._leaf_index[leaf.path] = index
        return index.get(norm(name_or_id)) or self.find(name_or_id)

    def in_group(self, group: str) -> list[Criterion]:
        """All criterion entries of one group ("critical", "general", ...)."""
        if group not in CRITERIA_GROUPS:
            raise TaxonomyError(f"unknown criterion group {group!r}; groups: {', '.join(CRITERIA_GROUPS)}")
        return [c for c in self.criteria.values() if c.group == group]

    # --- tasks ----------------------------------------------------------------------------
    def leaves(self) -> list[TaskNode]:
        """Every leaf of the task tree, in tree order."""
        return [leaf for g in self.groups for t in g.tasks for leaf in t.iter_leaves()]

    def task_type(self, task_type: str) -> TaskNode:
        """The task-type node for a Russian (or English, or key) task name."""
        if is_blank(task_type):
            raise TaxonomyError("no task type given")
        node = self.tasks.get(task_type)
        if node is not None:
            return node
        for t in self.tasks.values():
            if t.matches(task_type):
                return t
        raise TaxonomyError(f"unknown task type {task_type!r}{suggest(task_type, self.tasks)}")

    def task(self, task_type: str, task_subtype: str | None = None,
             task_subsubtype: str | None = None) -> TaskNode:
        """The leaf a dataset's (task_type, task_subtype, task_subsubtype) names.

        Levels below a leaf are ignored (the leaf already fixes the criteria); a missing or
        unknown level above a leaf is a TaxonomyError that lists the choices.
        """
        node = self.task_type(task_type)
        for column, wanted in (("task_subtype", task_subtype), ("task_subsubtype", task_subsubtype)):
            if node.is_leaf:
                break
            choices = [c.name for c in node.children]
            where = " / ".join(node.path)
            if is_blank(wanted):
                raise TaxonomyError(f"task {where!r} needs a {column}: one of {choices}")
            child = next((c for c in node.children if c.matches(str(wanted))), None)
            if child is None:
                raise TaxonomyError(
                    f"unknown {column} {wanted!r} for task {where!r}{suggest(str(wanted), choices)}; "
                    f"choices: {choices}"
                )
            node = child
        if not node.is_leaf:
            choices = [c.name for c in node.children]
            raise TaxonomyError(f"task {' / '.join(node.path)!r} needs a deeper level: one of {choices}")
        return node

    def criteria_for_task(self, task_type: str, task_subtype: str | None = None,
                          task_subsubtype: str | None = None) -> list[Criterion]:
        """The leaf's ordered criteria list."""
        leaf = self.task(task_type, task_subtype, task_subsubtype)
        return [self.criteria[cid] for cid in leaf.criteria or ()]

    def task_group(self, task_type: str) -> str:
        """Russian name of the task group a task type belongs to."""
        return self.task_type(task_type).group

    def leaves_using(self, criterion_id: str) -> list[TaskNode]:
        """The leaves whose criteria list contains this id."""
        self.criterion(criterion_id)
        return [leaf for leaf in self.leaves() if criterion_id in (leaf.criteria or ())]


def is_blank(value: object) -> bool:
    """None, "", whitespace or a float NaN (pandas' missing value) all mean 'not given'."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and not value.strip()


def mapping_text(value: object, lang: str = "ru") -> str:
    """A `{"en": …, "ru": …}` field of the official files as text (a plain string passes through)."""
    if isinstance(value, Mapping):
        text = value.get(lang)
        if text is None:
            text = next((v for v in value.values() if isinstance(v, str)), "")
        return str(text or "")
    return "" if value is None else str(value)
