"""The synth filter stage's text logic: non-Russian share, exact and near duplicates.

The language test runs the real `razdel` + `lingua` pipeline over a labelled set of 235 instructions
(tests/data/synth/language_labelled.jsonl, labelled by what a Russian reader would say); run with
`-s` to see the accuracy per kind. `bench/bench_filter.py` prints the same numbers and the speed.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from collections import defaultdict
from pathlib import Path

import pytest

from pollux.synth.filter import (
    FilterSettings,
    filter_instructions,
    foreign_share,
    foreign_shares,
    normalise,
)

DATA = Path(__file__).parent / "data" / "synth"
LABELLED = DATA / "language_labelled.jsonl"
NEAR = DATA / "filter_near_duplicates.json"


def read_labelled(path: Path = LABELLED) -> list[dict]:
    """The labelled set; a malformed line is an error naming its line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        if not (isinstance(row.get("text"), str) and isinstance(row.get("keep"), bool)
                and isinstance(row.get("kind"), str)):
            raise ValueError(f"{path.name} line {n}: needs text (str), keep (bool), kind (str)")
        rows.append(row)
    return rows


def rows_of(texts: list[str], prefix: str = "k") -> list[dict]:
    return [{"key": f"{prefix}{i:03d}", "instruction": t, "task_leaf": "leaf"} for i, t in enumerate(texts)]


def test_language_decisions_on_the_labelled_set_are_at_least_95_percent_right():
    rows = read_labelled()
    assert len(rows) >= 200
    kinds = {r["kind"] for r in rows}
    assert {"ru_short", "ru_long", "ru_code", "ru_terms", "mixed_ru_en", "en", "uk", "be", "bg", "sr",
            "kk"} <= kinds
    threshold = FilterSettings().max_foreign_share
    shares = foreign_shares([r["text"] for r in rows])
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    wrong = []
    for row, share in zip(rows, shares, strict=True):
        right = (share <= threshold) == row["keep"]
        per_kind[row["kind"]][0] += right
        per_kind[row["kind"]][1] += 1
        if not right:
            wrong.append(f"  {row['kind']} share={share:.3f} {row['text'][:80]!r}")
    accuracy = sum(ok for ok, _ in per_kind.values()) / len(rows)
    print(f"\nlanguage filter at {threshold:.0%}: accuracy {accuracy:.3f} on {len(rows)} texts")
    for kind, (ok, total) in per_kind.items():
        print(f"  {kind:12s} {ok}/{total}")
    print("\n".join(wrong))
    assert accuracy >= 0.95, "\n".join(wrong)
    # Each side on its own, so that a filter keeping (or dropping) everything cannot pass.
    keep_kinds = [k for k in per_kind if k.startswith("ru_")]
    for group in (keep_kinds, [k for k in per_kind if k not in keep_kinds]):
        ok = sum(per_kind[k][0] for k in group)
        assert ok / sum(per_kind[k][1] for k in group) >= 0.9, group


def test_code_numbers_urls_and_identifiers_are_neither_russian_nor_foreign():
    text = (
        "Исправь функцию `parse_config` в файле config.py: она падает на пустом вводе.\n\n"
        "```python\ndef parse_config(path):\n    with open(path) as f:\n        return json.load(f)\n```\n\n"
        "Документация лежит на https://docs.python.org/3/library/json.html, вопросы — на dev@example.com. "
        "Версия 3.11, переменная x и поле userName."
    )
    assert foreign_share(text) == 0.0
    # The same instruction with one English sentence added: the English words do count.
    mixed = text + " Please make sure that the function returns an empty dict for an empty file."
    assert foreign_share(mixed) > 0.05


def test_prose_in_a_code_fence_is_still_text():
    passage = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
    assert foreign_share(f"Переведи текст на русский:\n\n```\n{passage}\n```") > 0.5
    assert foreign_share(f"Переведи текст на русский:\n\n```text\n{passage}\n```") > 0.5
    assert foreign_share("Объясни код:\n```\nfor i in range(10):\n    print(i)\n```") == 0.0
    assert foreign_share('Объясни код:\n```python\nprint("this is the text it prints")\n```') == 0.0


def test_latin_terms_inside_russian_are_not_foreign_but_latin_phrases_are():
    assert foreign_share("Сравни Python и Java для первого языка программирования у школьника.") == 0.0
    assert foreign_share("Какие плагины для Visual Studio Code нужны начинающему разработчику?") == 0.0
    assert foreign_share("Как настроить API на FastAPI и задеплоить его в Docker?") == 0.0
    # Titles and product names keep their function words and are still names.
    assert foreign_share("Сравни Ruby on Rails и Django для стартапа.") == 0.0
    assert foreign_share("Напиши обзор сериала Game of Thrones без спойлеров.") == 0.0
    phrase = foreign_share("Переведи на русский: The weather is nice today, so we are going to the park.")
    assert phrase > 0.5
    # No Cyrillic at all: the text is foreign even when it is only "terms".
    assert foreign_share("Explain recursion") == 1.0


@pytest.mark.parametrize("text", [
    "Напиши короткий вірш про осінь у Києві.",                         # Ukrainian
    "Напішы кароткі верш пра зіму ў вёсцы.",                           # Belarusian
    "Дай ми пет съвета как да се науча да готвя вкусно.",              # Bulgarian
    "Помози ми да напишем молбу за годишњи одмор.",                    # Serbian
    "Күз туралы қысқа өлең жазып бер.",                                # Kazakh
    "Објасни зошто небото е сино, со едноставни зборови.",             # Macedonian
])
def test_other_cyrillic_languages_are_foreign(text):
    assert foreign_share(text) > 0.5


def test_a_quoted_ukrainian_sentence_counts_and_a_ukrainian_place_name_does_not():
    quoted = foreign_share("Переведи на русский язык: «Вчора ми довго гуляли парком, а ввечері дивилися кіно».")
    assert 0.3 < quoted < 1.0
    assert foreign_share("Составь план поездки на выходные в Київ и Львов для семьи с детьми.") == 0.0


def test_decomposed_unicode_reads_like_composed():
    text = "Напиши короткий рассказ о ёжике и его друзьях, который прочтёт первоклассник."
    assert foreign_share(unicodedata.normalize("NFD", text)) == foreign_share(text) == 0.0
    ukrainian = "Напиши короткий вірш про осінь у Києві."
    assert foreign_share(unicodedata.normalize("NFD", ukrainian)) == 1.0


def test_long_words_take_linear_time():
    foreign_share("Прогрев моделей языка.")
    start = time.perf_counter()
    assert foreign_share("a" * 100_000) == 1.0            # once a quadratic scan: minutes
    assert foreign_share("Вот " + "b" * 100_000 + "@") == 0.0
    assert foreign_share("Формула " + "\\(" * 30_000) == 0.0      # unclosed LaTeX openers
    assert time.perf_counter() - start < 10


def test_share_is_zero_for_a_text_without_words():
    assert foreign_share("") == 0.0
    assert foreign_share("```\nx = 1\n```\n 2 + 2 = 4 !!!") == 0.0


def test_non_russian_rows_are_rejected_with_their_share():
    rows = rows_of(["Напиши короткое стихотворение о зиме.", "Write a short poem about winter, please."])
    kept, rejected = filter_instructions(rows, FilterSettings())
    assert [r["key"] for r in kept] == ["k000"]
    assert len(rejected) == 1
    assert rejected[0]["key"] == "k001" and rejected[0]["reason"] == "non_russian"
    assert rejected[0]["detail"] == 1.0
    assert rejected[0]["task_leaf"] == "leaf"
    assert "reason" not in rows[1]                                     # the input is not modified


def test_exact_duplicates_after_normalisation_keep_the_first_key():
    texts = ["Напиши эссе о роли семьи в романе «Война и мир».",
             "  НАПИШИ эссе о роли семьи в романе \"Война и мир\"!  ",
             "Напиши эссе о роли семьи в романе Война и мир"]
    assert len({normalise(t) for t in texts}) == 1
    kept, rejected = filter_instructions(rows_of(texts), FilterSettings())
    assert [r["key"] for r in kept] == ["k000"]
    assert [(r["reason"], r["detail"]) for r in rejected] == [("exact_duplicate", "k000")] * 2
    assert normalise("Ёлка") == normalise("елка")


def test_an_exact_copy_of_a_near_duplicate_points_at_the_kept_original():
    original, edited = json.loads(NEAR.read_text(encoding="utf-8"))["paraphrases"][0]
    kept, rejected = filter_instructions(rows_of([original, edited, edited.upper()]), FilterSettings())
    assert [r["key"] for r in kept] == ["k000"]
    assert [(r["key"], r["reason"], r["detail"]) for r in rejected] == [
        ("k001", "near_duplicate", "k000"), ("k002", "exact_duplicate", "k000")]


def test_paraphrases_with_small_edits_are_near_duplicates():
    pairs = json.loads(NEAR.read_text(encoding="utf-8"))["paraphrases"]
    assert len(pairs) >= 10
    for i, (original, edited) in enumerate(pairs):
        rows = [{"key": f"p{i:02d}a", "instruction": original, "task_leaf": "leaf"},
                {"key": f"p{i:02d}b", "instruction": edited, "task_leaf": "leaf"}]
        kept, rejected = filter_instructions(rows, FilterSettings())
        assert [r["key"] for r in kept] == [f"p{i:02d}a"], (original, edited)
        assert rejected[0]["reason"] in {"near_duplicate", "exact_duplicate"}
        assert rejected[0]["detail"] == f"p{i:02d}a"
    # At least most of them are near (not exact) duplicates: the near-dup index did the work.
    near = 0
    for original, edited in pairs:
        _, rejected = filter_instructions(rows_of([original, edited]), FilterSettings())
        near += rejected[0]["reason"] == "near_duplicate"
    assert near >= len(pairs) - 3


def test_distinct_instructions_of_one_task_leaf_are_all_kept():
    groups = json.loads(NEAR.read_text(encoding="utf-8"))["siblings"]
    texts = [text for group in groups for text in group]
    kept, rejected = filter_instructions(rows_of(texts), FilterSettings())
    assert rejected == []
    assert len(kept) == len(texts)


def test_near_duplicate_threshold_is_configurable():
    original, edited = json.loads(NEAR.read_text(encoding="utf-8"))["paraphrases"][0]
    _, rejected = filter_instructions(rows_of([original, edited]), FilterSettings(near_dup_threshold=0.99))
    assert rejected == []
    _, rejected = filter_instructions(rows_of([original, edited]), FilterSettings(near_dup_threshold=0.5))
    assert [r["reason"] for r in rejected] == ["near_duplicate"]


def test_result_is_deterministic_and_independent_of_input_order():
    data = json.loads(NEAR.read_text(encoding="utf-8"))
    texts = [t for pair in data["paraphrases"] for t in pair] + [t for g in data["siblings"] for t in g]
    texts += ["Write a poem about the sea.", texts[0].upper()]
    rows = rows_of(texts)
    first = filter_instructions(rows, FilterSettings())
    shuffled = rows.copy()
    random.Random(7).shuffle(shuffled)
    assert filter_instructions(shuffled, FilterSettings()) == first
    kept, rejected = first
    assert [r["key"] for r in kept] == sorted(r["key"] for r in kept)
    assert len(kept) + len(rejected) == len(rows)
    assert {r["reason"] for r in rejected} == {"non_russian", "exact_duplicate", "near_duplicate"}


def test_bad_rows_are_named():
    with pytest.raises(ValueError, match=r"row 1 \(key 'b'\) lacks field\(s\) instruction"):
        filter_instructions([{"key": "a", "instruction": "Привет", "task_leaf": "x"},
                             {"key": "b", "task_leaf": "x"}], FilterSettings())
    with pytest.raises(ValueError, match="key 'a' occurs twice"):
        filter_instructions([{"key": "a", "instruction": "Привет", "task_leaf": "x"},
                             {"key": "a", "instruction": "Пока", "task_leaf": "x"}], FilterSettings())
    with pytest.raises(ValueError, match=r"row 0 \(key 'a'\): field 'instruction': invalid text: a lone surrogate"):
        filter_instructions([{"key": "a", "instruction": "Привет \ud800", "task_leaf": "x"}], FilterSettings())
    with pytest.raises(ValueError, match="near_dup_threshold"):
        FilterSettings(near_dup_threshold=0.0)
