"""The model card's snippet (its code; the differences are listed in its header) runs without
pollux against a checkpoint pollux saved, and prints the same text and score as
`pollux judge --template model-card`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollux.engine.reference import model_card_snippet_literals, run_model_card_snippet
from pollux.prompts import MODEL_CARD_TEMPLATE

SNIPPET = Path(__file__).parent.parent / "examples" / "model_card_snippet.py"


def test_snippet_uses_the_model_cards_template():
    assert model_card_snippet_literals(SNIPPET)["PROMPT_TEMPLATE"] == MODEL_CARD_TEMPLATE


def _snippet_matches_pollux_judge(judge_path: Path, tmp_path: Path, max_new_tokens: int | None) -> None:
    text, score = run_model_card_snippet(SNIPPET, judge_path, cwd=tmp_path, max_new_tokens=max_new_tokens)
    lit = model_card_snippet_literals(SNIPPET)
    proc = subprocess.run(
        [sys.executable, "-m", "pollux.cli", "judge", "--model", str(judge_path), "--template", "model-card",
         "--instruction", lit["instruction"], "--answer", lit["answer"], "--reference", lit["reference_answer"],
         "--criterion", lit["criteria_name"], "--rubrics", lit["criteria_rubrics"],
         "--max-new-tokens", str(max_new_tokens or 4096), "--device", "cpu"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = json.loads(proc.stdout)
    assert verdict["raw_text"] == text
    assert abs(verdict["head_score"] - score) <= 1e-4, (verdict["head_score"], score)
    print(f"model card snippet score {score:.6f}, pollux judge {verdict['head_score']:.6f}")


def test_model_card_snippet_matches_pollux_judge_short(tiny_judge_path: Path, tmp_path: Path):
    """The same comparison with the snippet's one `max_new_tokens=4096` literal set to 48."""
    _snippet_matches_pollux_judge(tiny_judge_path, tmp_path, max_new_tokens=48)


@pytest.mark.slow
def test_model_card_snippet_matches_pollux_judge(tiny_judge_path: Path, tmp_path: Path):
    """The snippet exactly as shipped: 4096 new tokens (≈ 2 minutes on 2 CPU cores)."""
    _snippet_matches_pollux_judge(tiny_judge_path, tmp_path, max_new_tokens=None)
