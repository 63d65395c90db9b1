"""Generate the worked example's data: Russian arithmetic questions with right, partly right and
wrong answers, judged under one criterion, «Правильность ответа», on a 0–2 scale.

Every row is written by this script, so the ground truth is known exactly:

* 2 — the answer equals the reference (the true result);
* 1 — a slip: the answer differs from the reference by 1–3 and keeps its tens digit;
* 0 — wrong: the answer differs from the reference in the tens digit (by 10 or more on average).

Results are two-digit numbers and the reference answer is in the prompt, so judging is a
comparison of two short numbers — a task a tiny transformer can learn from scratch on a CPU in
minutes. Classes are balanced. Splits use disjoint (a, op, b) questions, so the held-out rows are
new questions, not new answers to seen ones.

Usage: `python make_data.py OUT_DIR [--train 6000] [--valid 300] [--test 300] [--seed 0]`
writes OUT_DIR/train.jsonl, valid.jsonl, test.jsonl in pollux's training format.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CRITERION = "Правильность ответа"
RUBRICS = (
    "0: ответ неверен — он отличается от эталона в разряде десятков\n\n"
    "1: небольшая ошибка в вычислении — ответ отличается от эталона на 1–3\n\n"
    "2: ответ совпадает с эталоном"
)
# Operands are written in words, so the only numerals a judge sees before the answer are the
# reference's: comparing the answer with the reference is then a matter of two short numerals.
QUESTIONS = {
    "+": ["Сколько будет {a} плюс {b}?", "Найдите сумму чисел {a} и {b}.", "Вычислите: {a} плюс {b}."],
    "-": ["Сколько будет {a} минус {b}?", "Найдите разность чисел {a} и {b}.", "Вычислите: {a} минус {b}."],
}
UNITS = ["", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
TEENS = ["десять", "одиннадцать", "двенадцать", "тринадцать", "четырнадцать", "пятнадцать",
         "шестнадцать", "семнадцать", "восемнадцать", "девятнадцать"]
TENS = ["", "", "двадцать", "тридцать", "сорок", "пятьдесят", "шестьдесят", "семьдесят", "восемьдесят",
        "девяносто"]


def in_words(n: int) -> str:
    """1 → «один», 17 → «семнадцать», 42 → «сорок два» (1–99)."""
    if n < 10:
        return UNITS[n]
    if n < 20:
        return TEENS[n - 10]
    return f"{TENS[n // 10]} {UNITS[n % 10]}".strip()


# The answer ends with its number, as short answers to arithmetic questions do.
ANSWERS = ["{n}", "Ответ: {n}.", "Получается {n}."]
# The rationale quotes both numbers, then says how they compare — what a careful judge writes,
# and a scratchpad that makes the comparison local for a small model. Kept short: on a CPU every
# target token costs a pass of the 152k-token LM head.
VERDICTS = {2: "верно", 1: "почти верно", 0: "неверно"}


def rationale(reference: int, answer: int, score: int) -> str:
    return f"Эталон {reference}, ответ {answer}: {VERDICTS[score]}."


def questions(rng: random.Random) -> list[tuple[int, str, int, int]]:
    """All (a, op, b, result) with a two-digit result, shuffled."""
    out = []
    for a in range(1, 100):
        for b in range(1, 100):
            if 10 <= a + b <= 99:
                out.append((a, "+", b, a + b))
            if 10 <= a - b <= 99:
                out.append((a, "-", b, a - b))
    rng.shuffle(out)
    return out


def answer_for(result: int, score: int, rng: random.Random) -> int:
    if score == 2:
        return result
    if score == 1:
        options = [result + d for d in (-3, -2, -1, 1, 2, 3) if (result + d) // 10 == result // 10]
        return rng.choice(options)
    return rng.choice([n for n in range(10, 100) if n // 10 != result // 10])


def make_row(q: tuple[int, str, int, int], score: int, rng: random.Random) -> dict:
    a, op, b, result = q
    n = answer_for(result, score, rng)
    return {
        "instruction": rng.choice(QUESTIONS[op]).format(a=in_words(a), b=in_words(b)),
        "reference_answer": str(result),
        "answer": rng.choice(ANSWERS).format(n=n),
        "criteria_name": CRITERION,
        "rubrics": RUBRICS,
        "rationale": rationale(result, n, score),
        "score": score,
    }


def make_split(qs: list[tuple[int, str, int, int]], n: int, rng: random.Random) -> list[dict]:
    rows = [make_row(qs[i % len(qs)], i % 3, rng) for i in range(n)]
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_dataset(out: Path, *, train: int = 6000, valid: int = 300, test: int = 300, seed: int = 0) -> dict:
    """Write train/valid/test JSONL files to `out`; return their paths."""
    rng = random.Random(seed)
    qs = questions(rng)
    n_hold = (valid + test) // 3 + 2  # each held-out question is used for up to 3 answers
    held, rest = qs[:n_hold], qs[n_hold:]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, pool, n in (("train", rest, train), ("valid", held[: n_hold // 2], valid),
                          ("test", held[n_hold // 2 :], test)):
        paths[name] = out / f"{name}.jsonl"
        write_jsonl(make_split(pool, n, rng), paths[name])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description="Generate the arithmetic judging data set.")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--valid", type=int, default=300)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for name, path in make_dataset(a.out, train=a.train, valid=a.valid, test=a.test, seed=a.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
