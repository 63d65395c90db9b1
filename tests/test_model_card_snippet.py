"""The model card's snippet, verbatim but for the model path, runs without pollux against a
checkpoint pollux saved, and prints the same text and score as `pollux judge`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollux.engine.reference import model_card_snippet_literals, run_model_card_snippet
from pollux.prompts import DEFAULT_TEMPLATE

SNIPPET = Path(__file__).parent.parent / "examples" / "model_card_snippet.py"


def test_snippet_uses_the_default_template():
    assert model_card_snippet_literals(SNIPPET)["PROMPT_TEMPLATE"] == DEFAULT_TEMPLATE


@pytest.mark.slow
def test_model_card_snippet_matches_pollux_judge(tiny_judge_path: Path, tmp_path: Path):
    text, score = run_model_card_snippet(SNIPPET, tiny_judge_path, cwd=tmp_path)
    lit = model_card_snippet_literals(SNIPPET)
    proc = subprocess.run(
        [sys.executable, "-m", "pollux.cli", "judge", "--model", str(tiny_judge_path),
         "--instruction", lit["instruction"], "--answer", lit["answer"], "--reference", lit["reference_answer"],
         "--criterion", lit["criteria_name"], "--rubrics", lit["criteria_rubrics"],
         "--max-new-tokens", "4096", "--device", "cpu"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = json.loads(proc.stdout)
    assert verdict["raw_text"] == text
    assert abs(verdict["head_score"] - score) <= 1e-4, (verdict["head_score"], score)
    print(f"model card snippet score {score:.6f}, pollux judge {verdict['head_score']:.6f}")
