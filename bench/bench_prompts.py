"""Benchmark: header neutralising (`pollux.prompts.neutralise_headers`) on 200k-character answers.

Every field of every prompt goes through it, so it must stay cheap on the longest answers: prints
the best of N runs for prose without headers, many short lines, and a text made of header lines.

    python bench/bench_prompts.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

from pollux.prompts import neutralise_headers

KINDS = {"prose": "Обычный длинный ответ модели, в котором нет заголовков, но есть слова оценка и ответ. ",
         "many short lines": "Ответ для\n",
         "full of headers": "### Критерий оценки:\n"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chars", type=int, default=200_000)
    args = parser.parse_args()
    neutralise_headers("warm up")  # builds the skeleton table once
    for kind, line in KINDS.items():
        text = (line * (args.chars // len(line) + 1))[: args.chars]
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            neutralise_headers(text)
            best = min(best, time.perf_counter() - started)
        print(f"neutralise_headers, {args.chars} chars ({kind}): {best * 1000:.1f} ms (best of {args.repeats})")


if __name__ == "__main__":
    main()
