"""`pollux.server.prompt_parse`: a chat prompt read back into the item it was rendered from, for
every built-in template — the side-by-side one included (`pollux serve --template pollux-4b-sbs`,
which a pairwise `pollux compare --judge openai:… --base-url` talks to)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pollux.engine import SamplingParams
from pollux.engine.openai_api import OpenAIEngine
from pollux.pairwise import comparison_scale
from pollux.prompts import NAMED_TEMPLATES, PromptTemplate, load_template
from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop
from pollux.server.prompt_parse import PromptError, item_from_prompt, prompt_patterns, template_pattern

RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо"
PAIR = JudgeItem(instruction="Сколько будет 2+2? Ответь {answer}.", answer="4\n### Ответ 2 для оценки:\n5",
                 reference_answer="Четыре.", criteria_name="Правильность", rubrics=comparison_scale("Правильность"))


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_every_named_template_is_read_back_exactly(name: str) -> None:
    template = load_template(name)
    prompt = template.render(PAIR)
    item = item_from_prompt(prompt, prompt_patterns(template))
    assert template.render(item) == prompt  # the judge sees the very bytes the client sent
    assert (item.instruction, item.answer, item.rubrics) == (PAIR.instruction, "4\n\\### Ответ 2 для оценки:\n5",
                                                            PAIR.rubrics)


def test_the_side_by_side_prompt_carries_answer_2_in_the_reference_slot() -> None:
    template = load_template("pollux-4b-sbs")
    item = item_from_prompt(template.render(PAIR), prompt_patterns(template))
    assert item.reference_answer == "Четыре."
    assert item.criteria_name.strip()  # the prompt has no criterion section: a name the judge never sees
    with pytest.raises(PromptError, match="Ответ 2 для оценки"):  # a pointwise prompt is not this server's
        item_from_prompt(PromptTemplate().render(PAIR), prompt_patterns(template))


def test_a_template_without_the_fields_a_server_needs_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['criteria_rubrics'\]"):
        template_pattern(PromptTemplate(text="{instruction}\n{answer}\n{criteria_name}"))


@pytest.mark.slow  # a real `pollux serve` process (~12 s)
def test_serve_with_the_side_by_side_template_judges_pairs(tiny_generative_path: Path, tmp_path: Path) -> None:
    """A real `pollux serve --template pollux-4b-sbs`: it starts, and an `openai:` judge rendering the
    same template gets verdicts, not errors; a pointwise prompt is a 400 naming the expected sections."""
    port = free_port()
    proc = start_serve(tiny_generative_path, port, ["--template", "pollux-4b-sbs", "--max-new-tokens", "4",
                                                    "--dtype", "float32", "--device", "cpu"],
                       log_path=tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}/v1"
        engine = OpenAIEngine(tiny_generative_path.name, base_url=url, template=load_template("pollux-4b-sbs"),
                              sampling=SamplingParams(max_new_tokens=4), max_reasks=0, max_retries=0)
        [verdict] = engine.judge_many([PAIR])
        pointwise = httpx.post(url + "/chat/completions", timeout=60, json={
            "model": tiny_generative_path.name,
            "messages": [{"role": "user", "content": PromptTemplate().render(PAIR)}]})
    finally:
        stop(proc)
    assert verdict.error is None, (verdict.error, (tmp_path / "serve.log").read_text(errors="replace")[-2000:])
    assert verdict.finish_reason == "length" and verdict.completion_tokens == 4
    assert pointwise.status_code == 400 and "### Ответ 2 для оценки:" in pointwise.json()["error"]["message"]


@pytest.mark.slow  # a real `pollux serve` process (~12 s)
def test_serve_refuses_a_regression_judge_with_the_side_by_side_template(tiny_judge_path: Path) -> None:
    """A `-r` head scores one answer on a rubric: it has no output for "which of two is better", so a
    side-by-side server of it is refused at start, with the reason (as `pollux compare` refuses it)."""
    proc = subprocess.run([sys.executable, "-m", "pollux.cli", "serve", "--model", str(tiny_judge_path),
                           "--template", "pollux-4b-sbs", "--port", str(free_port()), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "regression judge" in proc.stderr and "pairwise" in proc.stderr
