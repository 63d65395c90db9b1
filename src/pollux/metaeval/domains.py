"""In-domain / out-of-domain split of the expert data.

The POLLUX judges were trained on synthetic data from which eight task types were held out; the
model card reports agreement with experts on those held-out ("out-of-domain") task types. A row
is out-of-domain when its `task_type` is in the held-out list. The list is configurable because a
judge trained on another recipe holds out other tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# Model card §5 (pollux-facts.md): dataset `task_type` values held out of the judges' training.
DEFAULT_OOD_TASKS: tuple[str, ...] = (
    "ИИ как персонаж (бытовая ситуация)",
    "ИИ как персонаж (экспертная ситуация)",
    "Прикладной брейншторминг",
    "Дать рекомендации",
    "Написать художественный текст",
    "Стайл-трансфер",
    "Придумать вопрос к тексту",
    "Изменить код",
)

SPLITS = ("ood", "id", "all")


def parse_ood_tasks(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """`None` → the default list; a path to a file → one task type per line (blank lines and
    `#` comments skipped); any other string → a comma-separated list; an iterable → as given."""
    if value is None:
        return DEFAULT_OOD_TASKS
    if not isinstance(value, str):
        tasks = tuple(str(v).strip() for v in value)
    elif Path(value).is_file():
        lines = Path(value).read_text(encoding="utf-8").splitlines()
        tasks = tuple(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
    else:
        tasks = tuple(s.strip() for s in value.split(","))
    tasks = tuple(t for t in tasks if t)
    if not tasks:
        raise ValueError("the list of out-of-domain task types is empty")
    return tasks


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split
