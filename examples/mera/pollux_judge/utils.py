"""Judging for the `pollux_judge_example` lm-evaluation-harness task: MERA's POLLUX protocol.

Each answer is judged criterion by criterion, sequentially, one `chat.completions.create` per
criterion with one user message (the POLLUX prompt, MERA's layout: a blank line between sections,
a trailing newline), through an OpenAI-compatible endpoint — `pollux serve --reply score`, or a
`NAME:score` model of any pollux server. Configured by the environment variables MERA reads:

    OPENAI_BASE_URL            the endpoint, e.g. http://127.0.0.1:8000/v1
    OPENAI_API_KEY             the server's key (pollux serve --api-key / POLLUX_API_KEY)
    POLLUX_JUDGE_MODEL         the model name: NAME (a --reply score server) or NAME:score
    POLLUX_JUDGE_TEMPERATURE   default 0 (pollux serve ignores it: decoding is the server's)
    POLLUX_JUDGE_MAX_TOKENS    default 512 (ignored too: a score is never cut)
    POLLUX_JUDGE_TIMEOUT       seconds per request, default 60
    POLLUX_JUDGE_PROMPT        optional prompt template with the fields {instruction},
                               {reference_answer}, {answer}, {criteria_name}, {criteria_rubrics}

The reply is read as MERA reads it: the whole reply a number, or the first line a number, or
`score: n` on the first line; anything else 0.0; clamped to [0, 2]. The row's metric is the mean
over its criteria / 2. Needs only the `openai` package; with pollux installed, header-looking
lines inside the texts are escaped as pollux itself renders them.
"""

from __future__ import annotations

import os
import re
from typing import Any

PROMPT = (
    "### Задание для оценки:\n{instruction}\n\n"
    "### Эталонный ответ:\n{reference_answer}\n\n"
    "### Ответ для оценки:\n{answer}\n\n"
    "### Критерий оценки:\n{criteria_name}\n\n"
    "### Шкала оценивания по критерию:\n{criteria_rubrics}\n"
)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_SCORE_LINE = re.compile(r"score\s*[:=]\s*([-+]?\d+(?:[.,]\d+)?)", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)

try:  # pollux escapes lines inside user text that look like section headers
    from pollux.prompts import neutralise_headers
except ImportError:  # without pollux: the texts as they are

    def neutralise_headers(text: str) -> str:
        return text


def render_prompt(instruction: str, answer: str, criteria_name: str, rubrics: str,
                  reference_answer: str = "", template: str | None = None) -> str:
    """The POLLUX judge prompt for one criterion (POLLUX_JUDGE_PROMPT, else MERA's layout)."""
    fields = {"instruction": instruction, "reference_answer": reference_answer or "", "answer": answer,
              "criteria_name": criteria_name, "criteria_rubrics": rubrics}
    text = template or os.environ.get("POLLUX_JUDGE_PROMPT") or PROMPT
    return text.format_map({k: neutralise_headers(v) for k, v in fields.items()})


def read_score(reply: str) -> float:
    """MERA's reading of a judge reply; unparseable → 0.0; clamped to [0, 2]."""
    text = reply.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    text = fence.group(1) if fence else text
    first = text.split("\n", 1)[0].strip()
    score = 0.0
    if _NUMBER.fullmatch(text):
        score = float(text.replace(",", "."))
    elif _NUMBER.fullmatch(first):
        score = float(first.replace(",", "."))
    elif match := _SCORE_LINE.fullmatch(first):
        score = float(match.group(1).replace(",", "."))
    return min(max(score, 0.0), 2.0)


def judge_answer(doc: dict[str, Any], answer: str, client: Any = None) -> list[float]:
    """The judge's score of `answer` on each of the row's criteria, asked one after another."""
    import openai

    client = client or openai.OpenAI(timeout=float(os.environ.get("POLLUX_JUDGE_TIMEOUT", "60")))
    answer = _THINK.sub("", answer).strip()  # a reasoning model's thinking is not its answer
    scores = []
    for criterion in doc["criteria"]:
        prompt = render_prompt(doc["instruction"], answer, criterion["criteria_name"], criterion["rubrics"],
                               doc.get("reference_answer") or "")
        reply = client.chat.completions.create(
            model=os.environ["POLLUX_JUDGE_MODEL"], messages=[{"role": "user", "content": prompt}],
            temperature=float(os.environ.get("POLLUX_JUDGE_TEMPERATURE", "0")),
            max_tokens=int(os.environ.get("POLLUX_JUDGE_MAX_TOKENS", "512")))
        scores.append(read_score(reply.choices[0].message.content or ""))
    return scores


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's hook: the generated answer → the row's metric, the mean over criteria / 2."""
    scores = judge_answer(doc, results[0])
    return {"pollux_score": sum(scores) / len(scores) / 2 if scores else 0.0}
