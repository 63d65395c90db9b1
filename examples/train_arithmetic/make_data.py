"""Generate the worked example's data: Russian arithmetic questions with right, partly right and
wrong answers, judged under one criterion, «Правильность ответа», on a 0–2 scale.

Questions use one-digit numbers written in words («Сколько будет семь минус два?»), the reference
answer is the true result as a numeral, answers are numerals. Every row is written by this script,
so the ground truth is known exactly:

* 2 — the answer equals the reference;
* 1 — a slip: the answer differs from the reference by 1;
* 0 — wrong: the answer differs from the reference by 3 or more.

The rationale quotes both numbers and the verdict («Эталон 5, ответ 6 почти верен.»). Judging is
a comparison of the answer with the reference — a task a tiny transformer can learn from scratch
on a CPU in minutes. Classes are balanced. A fifth of the (a, op, b) questions is held out (half
for valid, half for test), so held-out rows are new questions, not new answers to seen ones.

Usage: `python make_data.py OUT_DIR [--train 6000] [--valid 60] [--test 120] [--seed 0]`
writes OUT_DIR/train.jsonl, valid.jsonl, test.jsonl in pollux's training format.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CRITERION = "Правильность ответа"
RUBRICS = (
    "0: ответ неверен — он отличается от эталона на 3 и больше\n\n"
    "1: небольшая ошибка в вычислении — ответ отличается от эталона на 1\n\n"
    "2: ответ совпадает с эталоном"
)
# Operands are written in words, so the only numerals a judge sees before the answer are the
# reference's: comparing the answer with the reference is then a matter of two short numerals.
QUESTIONS = {
    "+": ["Сколько будет {a} плюс {b}?", "Найдите сумму чисел {a} и {b}.", "Вычислите: {a} плюс {b}."],
    "-": ["Сколько будет {a} минус {b}?", "Найдите разность чисел {a} и {b}.", "Вычислите: {a} минус {b}."],
}
UNITS = ["ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
TEENS = ["десять", "одиннадцать", "двенадцать", "тринадцать", "четырнадцать", "пятнадцать",
         "шестнадцать", "семнадцать", "восемнадцать", "девятнадцать"]
TENS = ["", "", "двадцать", "тридцать", "сорок", "пятьдесят", "шестьдесят", "семьдесят", "восемьдесят",
        "девяносто"]


def in_words(n: int) -> str:
    """0 → «ноль», 17 → «семнадцать», 40 → «сорок», 42 → «сорок два» (0–99)."""
    if n < 10:
        return UNITS[n]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10] + (f" {UNITS[n % 10]}" if n % 10 else "")


# Answers are bare numerals, as short answers to arithmetic questions are.
ANSWERS = ["{n}"]
# The rationale quotes both numbers, then says how they compare — what a careful judge writes,
# and a scratchpad that makes the comparison local for a small model. The verdict follows the
# answer's number directly: the model decides it where that number is its current token and only
# the reference has to be fetched by attention. With a separator in between («ответ 6: почти
# верно») both numbers must be fetched, and since either alone says little about the verdict
# (it depends on the pair), a from-scratch model sat at chance for 650 to over 1,000 steps.
# Kept short: on a CPU every target token costs a pass of the 152k-token LM head.
VERDICTS = {2: "верен", 1: "почти верен", 0: "неверен"}


def rationale(reference: int, answer: int, score: int) -> str:
    return f"Эталон {reference}, ответ {answer} {VERDICTS[score]}."


def questions(rng: random.Random) -> list[tuple[int, str, int, int]]:
    """All (a, op, b, result) with operands up to 99 and a one-digit result, shuffled. Operands
    are many (≈1,000 questions) so that a judge cannot learn results by heart: it has to read
    the reference answer."""
    out = []
    for a in range(100):
        for b in range(100):
            if a + b <= 9:
                out.append((a, "+", b, a + b))
            if 0 <= a - b <= 9:
                out.append((a, "-", b, a - b))
    rng.shuffle(out)
    return out


def answer_for(result: int, score: int, rng: random.Random) -> int:
    if score == 2:
        return result
    if score == 1:
        return rng.choice([n for n in (result - 1, result + 1) if 0 <= n <= 9])
    return rng.choice([n for n in range(10) if abs(n - result) >= 3])


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


def make_dataset(out: Path, *, train: int = 6000, valid: int = 60, test: int = 120, seed: int = 0) -> dict:
    """Write train/valid/test JSONL files to `out`; return their paths."""
    rng = random.Random(seed)
    qs = questions(rng)
    n_hold = len(qs) // 5  # a fifth of the questions is held out (half for valid, half for test)
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
    p.add_argument("--valid", type=int, default=60)
    p.add_argument("--test", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for name, path in make_dataset(a.out, train=a.train, valid=a.valid, test=a.test, seed=a.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
