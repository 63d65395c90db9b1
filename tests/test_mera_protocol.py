"""MERA's POLLUX tasks played against a real `pollux serve` process (issue 19 item 2).

The client is what MERA runs (docs/ecosystem.md, pollux-facts §9): the OpenAI Python SDK, base URL
and judge model from `OPENAI_BASE_URL` / `POLLUX_JUDGE_MODEL`, one `chat.completions.create` per
criterion, sequentially, one user message in MERA's prompt layout (a blank line between sections, a
trailing newline), temperature 0, `max_tokens` 512. Its reply reading is MERA's: the whole reply a
number (decimal comma allowed, a ```json fence stripped), or the first line a number, or
`score: n` / `score = n` on the first line; anything else 0.0; clamped to [0, 2]. The task metric is
the mean over a row's criteria / 2.

With `--reply score` (or the `NAME:score` model) every parsed score must equal the verdict's score
(the `pollux` object of the same reply); with `--reply full` (or `NAME:full`) the same client gets
today's `[FEEDBACK] …` / rationale text, and the test shows it reads wrong scores there.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pollux.fixtures import SCORING_RUBRICS
from pollux.server.launch import free_port, start_serve, stop

openai = pytest.importorskip("openai")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mera" / "pollux_judge"

KEY = "mera-key"
# MERA's layout of the POLLUX prompt: one blank line between sections and a trailing newline.
MERA_PROMPT = (
    "### Задание для оценки:\n{instruction}\n\n"
    "### Эталонный ответ:\n{reference_answer}\n\n"
    "### Ответ для оценки:\n{answer}\n\n"
    "### Критерий оценки:\n{criteria_name}\n\n"
    "### Шкала оценивания по критерию:\n{criteria_rubrics}\n"
)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_FIRST_LINE_SCORE = re.compile(r"score\s*[:=]\s*([-+]?\d+(?:[.,]\d+)?)", re.IGNORECASE)

# MERA rows (the human-centric subset: no reference answers): an instruction, an answer and the
# criteria to judge it by — ones the tiny generative judge gives a score on (it was overfitted on
# a few prompts: `pollux.fixtures.SCORING_REPLIES`).
ROWS = [
    {"instruction": "Сколько будет 2+2?", "answer": "4", "reference_answer": "",
     "criteria": [{"criteria_name": "Правильность ответа", "rubrics": SCORING_RUBRICS},
                  {"criteria_name": "Полнота", "rubrics": SCORING_RUBRICS}]},
    {"instruction": "Назови столицу Франции.", "answer": "Берлин", "reference_answer": "",
     "criteria": [{"criteria_name": "Правильность ответа", "rubrics": SCORING_RUBRICS}]},
    {"instruction": "Сколько будет 3+3?", "answer": "6", "reference_answer": "",
     "criteria": [{"criteria_name": "Правильность ответа", "rubrics": SCORING_RUBRICS}]},
]
# A prompt the tiny generative judge writes no `[RESULT]` for.
UNSCORED = {"instruction": "Сколько будет 2+2?", "answer": "4", "reference_answer": "4",
            "criteria_name": "Правильность ответа", "criteria_rubrics": SCORING_RUBRICS}


def mera_read(reply: str) -> float:
    """MERA's reading of a judge reply (pollux-facts §9); unparseable → 0.0; clamped to [0, 2]."""
    text = reply.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    text = fence.group(1) if fence else text
    first = text.split("\n", 1)[0].strip()
    score = 0.0
    if _NUMBER.fullmatch(text):
        score = float(text.replace(",", "."))
    elif _NUMBER.fullmatch(first):
        score = float(first.replace(",", "."))
    elif m := _FIRST_LINE_SCORE.fullmatch(first):
        score = float(m.group(1).replace(",", "."))
    return min(max(score, 0.0), 2.0)


def mera_task(model: str) -> tuple[list[float], list[float], int]:
    """One MERA run over `ROWS`: (per-row metric from the parsed replies, per-row metric from the
    verdicts' scores, how many criterion scores were parsed equal to the verdict's)."""
    import os

    client = openai.OpenAI(timeout=float(os.environ.get("POLLUX_JUDGE_TIMEOUT", "60")))  # OPENAI_BASE_URL, _API_KEY
    parsed_metric, verdict_metric, equal = [], [], 0
    for row in ROWS:
        parsed, truth = [], []
        for criterion in row["criteria"]:  # sequential, one request per criterion, as MERA does
            prompt = MERA_PROMPT.format(instruction=row["instruction"], reference_answer=row["reference_answer"],
                                        answer=row["answer"], criteria_name=criterion["criteria_name"],
                                        criteria_rubrics=criterion["rubrics"])
            reply = client.chat.completions.create(
                model=os.environ["POLLUX_JUDGE_MODEL"], messages=[{"role": "user", "content": prompt}],
                temperature=float(os.environ.get("POLLUX_JUDGE_TEMPERATURE", "0")),
                max_tokens=int(os.environ.get("POLLUX_JUDGE_MAX_TOKENS", "512")))
            verdict_score = (reply.model_extra or {})["pollux"]["score"]
            score = mera_read(reply.choices[0].message.content or "")
            parsed.append(score)
            truth.append(verdict_score)
            equal += verdict_score is not None and score == verdict_score
        parsed_metric.append(sum(parsed) / len(parsed) / 2)
        verdict_metric.append(sum(truth) / len(truth) / 2)
    return parsed_metric, verdict_metric, equal


N_CRITERIA = sum(len(r["criteria"]) for r in ROWS)


class Running:
    def __init__(self, port: int, name: str) -> None:
        self.url, self.name = f"http://127.0.0.1:{port}/v1", name


def serving(path: Path, name: str, reply: str, log: Path, *extra: str) -> Iterator[Running]:
    port = free_port()
    proc = start_serve(path, port, ["--dtype", "float32", "--device", "cpu", "--model-name", name,
                                    "--reply", reply, *extra], env={"POLLUX_API_KEY": KEY}, log_path=log)
    try:
        yield Running(port, name)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def regression_server(tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The tiny `-r` judge, `--reply score` for the whole server."""
    yield from serving(tiny_judge_path, "tiny-r", "score", tmp_path_factory.mktemp("mera-r") / "serve.log",
                       "--max-new-tokens", "8")


@pytest.fixture(scope="module")
def generative_server(scoring_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The tiny generative judge that writes `[RESULT] n`, `--reply full` (today's replies)."""
    yield from serving(scoring_judge_path, "tiny-gen", "full", tmp_path_factory.mktemp("mera-gen") / "serve.log",
                       "--max-new-tokens", "24")


def point_mera_at(monkeypatch: pytest.MonkeyPatch, server: Running, model: str) -> None:
    """MERA's environment variables, as its POLLUX tasks read them."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("POLLUX_JUDGE_MODEL", model)
    monkeypatch.setenv("POLLUX_JUDGE_TEMPERATURE", "0")
    monkeypatch.setenv("POLLUX_JUDGE_MAX_TOKENS", "512")


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["regression", "generative"])
def test_mera_reads_every_score_in_score_mode(judge: str, request: pytest.FixtureRequest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`--reply score` (the -r server) and the `NAME:score` model (the generative server, which
    replies in full by default): 100% of parsed scores equal the verdicts' scores, so MERA's
    metric is the verdicts' metric."""
    server: Running = request.getfixturevalue(f"{judge}_server")
    model = server.name if judge == "regression" else f"{server.name}:score"
    point_mera_at(monkeypatch, server, model)
    parsed, truth, equal = mera_task(model)
    assert equal == N_CRITERIA, f"{equal} of {N_CRITERIA} parsed scores equal the verdicts' scores"
    assert parsed == truth and all(math.isfinite(m) for m in parsed)


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["regression", "generative"])
def test_full_replies_are_what_mera_misreads(judge: str, request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`--reply full` (the generative server) and the `NAME:full` model (the -r server): the same
    client gets the judge's text, as before this mode existed, and reads scores that are not the
    verdicts' — the requirement of the test above fails there."""
    server: Running = request.getfixturevalue(f"{judge}_server")
    model = server.name if judge == "generative" else f"{server.name}:full"
    point_mera_at(monkeypatch, server, model)
    parsed, truth, equal = mera_task(model)
    assert equal < N_CRITERIA and parsed != truth


@pytest.mark.slow
def test_a_verdict_without_a_score_is_nan_never_a_digit_of_the_text(generative_server: Running,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge wrote no `[RESULT]`: in score mode the reply is `nan` — MERA reads 0.0, as for any
    reply without a number, but never a digit of the judge's text; the side object says why."""
    point_mera_at(monkeypatch, generative_server, "tiny-gen:score")
    reply = openai.OpenAI().chat.completions.create(
        model="tiny-gen:score", messages=[{"role": "user", "content": MERA_PROMPT.format(**UNSCORED)}],
        temperature=0, max_tokens=512)
    side = (reply.model_extra or {})["pollux"]
    assert side["score"] is None and side["valid"] is False and side["raw_text"]
    assert reply.choices[0].message.content == "nan" and mera_read("nan") == 0.0


def test_mera_reader_reads_as_the_spec_says() -> None:
    """The reader the tests use is MERA's (pollux-facts §9)."""
    cases: list[tuple[str, Any]] = [
        ("2", 2.0), ("1,5", 1.5), ("```json\n1\n```", 1.0), ("1.25\n\nrationale 2", 1.25),
        ("Score: 2", 2.0), ("score = 1", 1.0), ("[FEEDBACK] ok [RESULT] 2 [END]", 0.0), ("", 0.0),
        ("nan", 0.0), ("7", 2.0), ("-1", 0.0), ("хорошо\n2", 0.0),
    ]
    assert [mera_read(text) for text, _ in cases] == [want for _, want in cases]


def example_utils() -> Any:
    """examples/mera/pollux_judge/utils.py, the lm-eval task's judging, loaded as lm-eval loads it."""
    spec = importlib.util.spec_from_file_location("pollux_mera_example_utils", EXAMPLE / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_example_task_scores_rows_as_the_verdicts_do(generative_server: Running,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The example lm-eval task's `process_results` (its own MERA-style client) against the same
    server: each row's metric is the verdicts' mean over criteria / 2."""
    point_mera_at(monkeypatch, generative_server, "tiny-gen:score")
    _, truth, _ = mera_task("tiny-gen:score")
    utils = example_utils()
    got = [utils.process_results(row, [f"<think>считаю</think>{row['answer']}"])["pollux_score"] for row in ROWS]
    assert got == truth


def test_the_example_reads_and_renders_as_mera() -> None:
    utils = example_utils()
    for text in ("2", "1,5", "```json\n1\n```", "1.25\n\nrationale 2", "Score: 2", "nan", "7", "хорошо\n2"):
        assert utils.read_score(text) == mera_read(text)
    fields = {"instruction": "a", "reference_answer": "", "answer": "b", "criteria_name": "c", "criteria_rubrics": "d"}
    assert utils.render_prompt("a", "b", "c", "d") == MERA_PROMPT.format(**fields)
    rows = [json.loads(line) for line in (EXAMPLE / "sample.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["instruction"] and r["criteria"] and {"criteria_name", "rubrics"} <= set(r["criteria"][0])
                        for r in rows)
