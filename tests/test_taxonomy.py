"""The criteria taxonomy: built-in catalog, task tree, official-layout loader, criteria sets, CLI."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.records import JudgeItem
from pollux.scales import Scale, parse_scale
from pollux.taxonomy import (
    Catalog,
    Criterion,
    CriterionSpec,
    TaxonomyError,
    load_catalog,
    load_user_criteria,
    resolve_criteria,
)

DATA = Path(__file__).parent / "data" / "taxonomy-official"
# a copy of shared/spec/taxonomy (the POLLUX code base's taxonomy reduced to facts), carried here so
# that the check runs in any clone, never skipped
SKELETON = Path(__file__).parent / "data" / "taxonomy-skeleton"

CORE = {  # id → (group, Russian name, scale max)
    "narushenie_formata": ("critical", "Есть ли критичное нарушение формата (чрезмерные зацикливания, сплошные "
                           "артефакты, ответ на другом языке), которое не позволяет оценить ответ модели?", 1),
    "censor": ("critical", "Ответа нет, но есть заглушка цензора?", 1),
    "repeats": ("general", "Отсутствие зацикливаний", 2),
    "special_symbol": ("general", "Отсутствие артефактов", 2),
    "system_prompt_follow": ("general", "Формальный учет требований из запроса пользователя", 2),
    "proactivity": ("general", "Проактивность", 2),
    "grammar": ("general", "Грамотность", 2),
    "speech_errors": ("general", "Отсутствие речевых ошибок", 2),
    "value": ("subjective", "Полезность", 2),
    "speech": ("subjective", "Естественность и несинтетичность речи", 2),
    "understanding": ("subjective", "Доступность", 2),
    "format": ("subjective", "Красивое форматирование", 2),
    "general": ("subjective", "Общее впечатление от ответа модели", 2),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- the built-in catalog -----------------------------------------------------------------------

def test_counts(catalog: Catalog) -> None:
    assert len(catalog.groups) == 8
    assert len(catalog.tasks) == 35
    leaves = catalog.leaves()
    assert len(leaves) == 152
    assert Counter(len(leaf.path) for leaf in leaves) == {1: 10, 2: 92, 3: 50}
    assert sum(bool(leaf.has_gold) for leaf in leaves) == 33
    assert len(catalog.criteria) == 295
    assert len({c.base_id for c in catalog.criteria.values()}) == 60
    assert Counter(c.group for c in catalog.criteria.values()) == {
        "critical": 2, "general": 6, "subjective": 5, "domain": 40, "task": 242}
    assert Counter((c.scale.min, c.scale.max) for c in catalog.criteria.values()) == {
        (0, 2): 248, (0, 1): 26, (0, 4): 12, (0, 3): 9}
    assert len({leaf.criteria for leaf in leaves}) == 84
    assert set(catalog.criteria_groups) == {"critical", "general", "subjective", "domain", "task"}


def test_core_criteria(catalog: Catalog) -> None:
    for cid, (group, name, top) in CORE.items():
        c = catalog.criterion(cid)
        assert c.group == group, cid
        assert c.scale == Scale(0.0, float(top), tuple(float(i) for i in range(top + 1))), cid
        assert c.name == name, cid
    for cid in ("narushenie_formata", "censor"):
        c = catalog.criterion(cid)
        assert c.is_binary
        # 1 = the failure is present
        assert c.rubrics.split("\n\n")[1].startswith("1: Да")


def test_every_leaf_id_exists_and_every_criterion_is_used(catalog: Catalog) -> None:
    used = set()
    for leaf in catalog.leaves():
        assert leaf.criteria, leaf.path
        for cid in leaf.criteria:
            assert cid in catalog.criteria, (leaf.path, cid)
        used.update(leaf.criteria)
    assert used == set(catalog.criteria)


def test_every_rubric_matches_its_scale(catalog: Catalog) -> None:
    for c in catalog.criteria.values():
        assert parse_scale(c.rubrics) == c.scale, c.id
        paragraphs = c.rubrics.split("\n\n")
        assert len(paragraphs) == len(c.scale.levels), c.id
        for level, paragraph in zip(c.scale.levels, paragraphs, strict=True):
            assert paragraph.startswith(f"{level:g}: "), (c.id, paragraph)
            body = paragraph.split(": ", 1)[1]
            assert len(body) > 20 and re.search("[а-яё]", body), (c.id, body)
        assert c.description and re.search("[а-яё]", c.description), c.id
        assert c.rubrics == c.rubrics.strip()


def test_variants_reuse_base_but_say_where_they_apply(catalog: Catalog) -> None:
    c = catalog.criterion("creativity__3")
    assert c.base_id == "creativity" and c.domain == "scientific" and c.group == "domain"
    assert c.scale.max == 2  # the skeleton's Russian 1–3 anomaly is not carried over
    assert catalog.criterion("correct_answer").base_id == "correct_answer"
    assert "научного" in c.description
    assert {leaf.path[0] for leaf in catalog.leaves_using("correct_answer__5")} == {"Отредактировать текст"}


def test_lookups(catalog: Catalog) -> None:
    assert catalog.find("Отсутствие зацикливаний").id == "repeats"
    assert catalog.find("  отсутствие   ЗАЦИКЛИВАНИЙ ").id == "repeats"
    assert catalog.find("Usefulness").id == "value"
    assert catalog.find("code_style__3").id == "code_style__3"
    # a name shared by 33 variants finds the base entry
    assert catalog.find("Правильность ответа").id == "correct_answer"
    assert catalog.find("Нет такого критерия") is None
    with pytest.raises(TaxonomyError, match=r"unknown criterion id 'repeat'.*'repeats'"):
        catalog.criterion("repeat")
    with pytest.raises(KeyError):  # TaxonomyError is KeyError-like ...
        catalog.criterion("nope")
    with pytest.raises(ValueError):  # ... and a ValueError
        catalog.criterion("nope")


def test_task_tree(catalog: Catalog) -> None:
    ids = [c.id for c in catalog.criteria_for_task("Отредактировать текст")]
    assert ids[:2] == ["narushenie_formata", "censor"] and ids[-1] == "style" and len(ids) == 15
    leaf = catalog.criteria_for_task("Суммаризация", "Краткий пересказ", "Научный текст")
    assert [c.id for c in leaf][-2:] == ["idea_and_details__9", "summary"]
    # the same leaf by English names / keys, and with ё/case/spacing differences
    assert catalog.criteria_for_task("Summarizing", "brief retelling", "Scientific text") == leaf
    assert catalog.criteria_for_task("Изменить код", "Python")[0].id == "operability__10"
    # a level below a leaf is ignored
    assert catalog.criteria_for_task("Дать совет", "что-нибудь") == catalog.criteria_for_task("Дать совет")
    assert catalog.task_group("Стайл-трансфер") == "Преобразование заданного текста"
    assert catalog.task_group("Изменить код") == "Решение технических задач"
    assert catalog.task("Дать совет").has_gold is False
    assert catalog.task("Анализ данных").complexity == ("easy", "hard")


def test_task_errors(catalog: Catalog) -> None:
    with pytest.raises(TaxonomyError, match=r"unknown task type 'Стайл трансфер'.*'Стайл-трансфер'"):
        catalog.criteria_for_task("Стайл трансфер")
    with pytest.raises(TaxonomyError, match=r"needs a task_subtype: one of \['Перепиши в стиле \(задаём писателя\)'"):
        catalog.criteria_for_task("Стайл-трансфер")
    with pytest.raises(TaxonomyError, match=r"unknown task_subtype 'Перепиши в стиле писателя'.*did you mean"):
        catalog.criteria_for_task("Стайл-трансфер", "Перепиши в стиле писателя")
    with pytest.raises(TaxonomyError, match="needs a task_subsubtype"):
        catalog.criteria_for_task("Суммаризация", "Краткий пересказ", float("nan"))
    with pytest.raises(TaxonomyError, match="unknown task type"):
        catalog.task_group("Нет такой задачи")


def test_built_in_data_matches_the_skeleton(catalog: Catalog) -> None:
    skeleton = json.loads((SKELETON / "criteria_skeleton.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in skeleton] == list(catalog.criteria)
    for row in skeleton:
        c = catalog.criterion(row["id"])
        assert (c.name, c.name_en) == (row["name_ru"], row["name_en"])
        assert [f"{v:g}" for v in c.scale.levels] == row["scale_levels"]
    tree = json.loads((SKELETON / "tasks_skeleton.json").read_text(encoding="utf-8"))
    lists: list[tuple[str, ...]] = []

    def walk(node: dict) -> None:
        if node["criteria"] is not None:
            lists.append(tuple(node["criteria"]))
        for child in node["subtasks"]:
            walk(child)

    for group in tree:
        for task in group["tasks"]:
            walk(task)
    assert lists == [leaf.criteria for leaf in catalog.leaves()]


# --- the official layout ------------------------------------------------------------------------

def test_official_loader_reads_the_sample() -> None:
    official = load_catalog(DATA)
    assert official.source == str(DATA)
    assert list(official.criteria) == ["narushenie_formata", "value", "correct_answer__5"]
    value = official.criterion("value")
    assert value.rubrics == "0: Бесполезно.\n\n1: Частично полезно.\n\n2: Полезно."
    assert value.group == "subjective" and value.name_en == "Usefulness"
    assert official.criterion("narushenie_formata").is_binary
    assert [c.id for c in official.criteria_for_task("Отредактировать текст")] == [
        "narushenie_formata", "value", "correct_answer__5"]
    assert [c.id for c in official.criteria_for_task("Выделить из текста", "Выпиши из художественного текста")] == [
        "narushenie_formata", "value"]
    assert official.task_group("Editing") == "Преобразование заданного текста"
    # either file, or a clone root with metainfo/, also works
    assert list(load_catalog(DATA / "tasks.json").criteria) == list(official.criteria)


def test_official_loader_accepts_a_clone_root_and_subtasks_l2(tmp_path: Path) -> None:
    meta = tmp_path / "pollux-clone" / "metainfo"
    shutil.copytree(DATA, meta)
    tasks = json.loads((meta / "tasks.json").read_text(encoding="utf-8"))
    extract = tasks["Text Transformation"]["tasks"]["Extract"]["subtasks_l1"]
    extract["Deeper"] = {"name": {"en": "Deeper", "ru": "Глубже"},
                         "subtasks_l2": {"Leaf": {"name": {"en": "Leaf", "ru": "Лист"}, "criteria": ["value"],
                                                  "has_gold": False}}}
    (meta / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    official = load_catalog(tmp_path / "pollux-clone")
    assert [c.id for c in official.criteria_for_task("Выделить из текста", "Глубже", "Лист")] == ["value"]
    assert len(official.leaves()) == 3


def test_official_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_catalog(tmp_path / "missing")
    with pytest.raises(TaxonomyError, match=r"holds no criteria\.json"):
        load_catalog(tmp_path)
    shutil.copytree(DATA, tmp_path / "bad")
    tasks_path = tmp_path / "bad" / "tasks.json"
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    tasks["Text Transformation"]["tasks"]["Editing"]["criteria"].append("no_such_id")
    tasks_path.write_text(json.dumps(tasks), encoding="utf-8")
    with pytest.raises(TaxonomyError, match=r"'Отредактировать текст' uses unknown criterion id 'no_such_id'"):
        load_catalog(tmp_path / "bad")
    tasks_path.write_text('{"a": 1,\n oops}', encoding="utf-8")
    with pytest.raises(TaxonomyError, match=r"tasks.json: invalid JSON at line 2"):
        load_catalog(tmp_path / "bad")


# --- criteria sets ------------------------------------------------------------------------------

OWN = [{"criteria_name": "Полезность", "rubrics": "0: нет\n\n1: да"},
       {"criteria_name": "Свой критерий", "rubrics": "0: плохо\n\n1: средне\n\n2: хорошо"}]


def test_resolve_order(catalog: Catalog) -> None:
    row = {"criteria_name": "Отсутствие зацикливаний", "rubrics": "0: a\n\n1: b\n\n2: c",
           "task_type": "Дать совет"}
    user = [CriterionSpec("Из файла", "0: a\n\n1: b")]
    # 1. the record's own list wins over everything
    specs = resolve_criteria({**row, "criteria": OWN}, catalog, user)
    assert [s.name for s in specs] == ["Полезность", "Свой критерий"]
    assert specs[0].rubrics == "0: нет\n\n1: да"  # the record's rubric, not the catalog's
    assert (specs[0].criterion_id, specs[0].group) == ("value", "subjective")
    assert (specs[1].criterion_id, specs[1].group) == (None, None)
    assert specs[1].scale == Scale(0, 2, (0, 1, 2))
    # 2. then a dataset row's single criterion
    specs = resolve_criteria(row, catalog, user)
    assert len(specs) == 1 and specs[0].criterion_id == "repeats" and specs[0].rubrics == row["rubrics"]
    # 3. then the task tree
    specs = resolve_criteria({"task_type": "Дать совет"}, catalog, user)
    assert [s.criterion_id for s in specs] == [c.id for c in catalog.criteria_for_task("Дать совет")]
    assert specs[0].rubrics == catalog.criterion("narushenie_formata").rubrics
    # 4. then the user's file
    assert resolve_criteria({"instruction": "x"}, catalog, user) == user
    # 5. else an error saying what to give
    with pytest.raises(TaxonomyError, match="record has no criteria: give"):
        resolve_criteria({"instruction": "x", "criteria": [], "criteria_name": None}, catalog)


def test_resolve_json_string_and_array_lists(catalog: Catalog) -> None:
    as_text = resolve_criteria({"criteria": json.dumps(OWN, ensure_ascii=False)}, catalog)
    as_list = resolve_criteria({"criteria": OWN}, catalog)
    as_array = resolve_criteria({"criteria": np.array(OWN, dtype=object)}, catalog)  # parquet via pandas
    assert as_text == as_list == as_array
    with pytest.raises(TaxonomyError, match="not a JSON list of criteria"):
        resolve_criteria({"criteria": "[{oops"}, catalog)


def test_resolve_finds_the_task_variant_and_fills_rubrics(catalog: Catalog) -> None:
    record = {"criteria_name": "Правильность ответа", "rubrics": "0: нет\n\n1: да\n\n2: да",
              "task_type": "Отредактировать текст"}
    assert resolve_criteria(record, catalog)[0].criterion_id == "correct_answer__5"
    # without its own rubric the catalog's is used; ids and dict rubrics are accepted in lists
    specs = resolve_criteria({"criteria": ["repeats", {"criteria_name": "Грамотность"},
                                           {"criteria_name": "X", "rubrics": {"1": "b", "0": "a"}}]}, catalog)
    assert [s.criterion_id for s in specs] == ["repeats", "grammar", None]
    assert specs[1].rubrics == catalog.criterion("grammar").rubrics
    assert specs[2].rubrics == "0: a\n\n1: b" and specs[2].scale.is_binary
    # the specs make valid judge items
    item = JudgeItem("Вопрос", "Ответ", specs[0].name, specs[0].rubrics)
    assert item.criteria_name == "Отсутствие зацикливаний"


def test_resolve_errors(catalog: Catalog) -> None:
    with pytest.raises(TaxonomyError, match="unknown task type 'Нет такой'"):
        resolve_criteria({"task_type": "Нет такой"}, catalog)
    with pytest.raises(TaxonomyError, match=r"criteria\[1\]: unknown criterion id 'repeatz'"):
        resolve_criteria({"criteria": ["repeats", {"criterion_id": "repeatz", "criteria_name": "A",
                                                   "rubrics": "0: a\n\n1: b"}]}, catalog)
    with pytest.raises(TaxonomyError, match=r"criteria\[0\]: unknown criterion 'Неизвестное'"):
        resolve_criteria({"criteria": ["Неизвестное"]}, catalog)
    with pytest.raises(TaxonomyError, match="has no 'rubrics' and is not in the catalog"):
        resolve_criteria({"criteria_name": "Свой критерий без шкалы"}, catalog)


def test_load_user_criteria(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "crit.json"
    path.write_text(json.dumps(["repeats", "value", *OWN], ensure_ascii=False), encoding="utf-8")
    specs = load_user_criteria(path)
    assert [s.criterion_id for s in specs] == ["repeats", "value", "value", None]
    assert specs[0] == CriterionSpec.from_criterion(catalog.criterion("repeats"))
    path.write_text(json.dumps({"criteria": ["general__2"]}), encoding="utf-8")
    assert load_user_criteria(path, catalog)[0].scale.max == 4
    path.write_text(json.dumps(["repeats", "no_such_id"]), encoding="utf-8")
    with pytest.raises(TaxonomyError, match=r"crit.json: entry 1: unknown criterion 'no_such_id'"):
        load_user_criteria(path)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="non-empty JSON list"):
        load_user_criteria(path)
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_user_criteria(tmp_path / "missing.json")


def test_criterion_is_the_documented_shape(catalog: Catalog) -> None:
    c = catalog.criterion("understanding__2")
    assert isinstance(c, Criterion)
    assert (c.name, c.group, c.domain, c.base_id, c.is_binary) == ("Доступность", "task", "general",
                                                                     "understanding", False)
    assert c.to_dict()["scale"] == [0, 4]


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_show_tasks_and_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["criteria", "show", "Изменить код", "Python"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows][:2] == ["operability__10", "correct_answer__28"]
    assert all(parse_scale(r["rubrics"]).max == r["scale"][1] for r in rows)

    result = runner.invoke(app, ["criteria", "tasks"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 152

    result = runner.invoke(app, ["criteria", "list", "--group", "critical", "--no-rubrics"])
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["narushenie_formata", "censor"]

    result = runner.invoke(app, ["criteria", "get", "Полезность", "--metainfo", str(DATA)])
    assert json.loads(result.stdout)["rubrics"].startswith("0: Бесполезно.")

    result = runner.invoke(app, ["criteria", "show", "Изменить кот"])
    assert result.exit_code == 2
    assert "unknown task type 'Изменить кот'" in result.stderr and result.stdout == ""
