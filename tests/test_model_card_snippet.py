"""The model card's snippet, verbatim but for the model path, runs without pollux against a
checkpoint pollux saved, and prints the same text and score as `pollux judge`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pollux.prompts import DEFAULT_TEMPLATE

SNIPPET = Path(__file__).parent.parent / "examples" / "model_card_snippet.py"

# Runs a script with site-packages on the path but without processing .pth files (-S), so the
# editable install of pollux is invisible; it fails loudly if pollux is importable anyway.
BOOT = """
import importlib.util, runpy, sys
sys.path.append({site!r})
assert importlib.util.find_spec("pollux") is None, "pollux must not be importable here"
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def snippet_literals() -> dict[str, str]:
    tree = ast.parse(SNIPPET.read_text(encoding="utf-8"))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            values[node.targets[0].id] = node.value.value  # type: ignore[attr-defined]
    return values


def run_snippet(model_path: Path, cwd: Path) -> tuple[str, float]:
    boot = BOOT.format(site=sysconfig.get_paths()["purelib"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", boot, str(SNIPPET), str(model_path)],
                          capture_output=True, cwd=cwd, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    # bytes, not text mode: a generated "\r" must not be turned into "\n"
    *text, score = proc.stdout.decode("utf-8").removesuffix("\n").split("\n")
    return "\n".join(text), float(score)


def test_snippet_uses_the_default_template():
    assert snippet_literals()["PROMPT_TEMPLATE"] == DEFAULT_TEMPLATE


@pytest.mark.slow
def test_model_card_snippet_matches_pollux_judge(tiny_judge_path: Path, tmp_path: Path):
    text, score = run_snippet(tiny_judge_path, tmp_path)
    lit = snippet_literals()
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
