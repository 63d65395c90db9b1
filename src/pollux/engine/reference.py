"""The model card's method, as a reference for parity tests and benchmarks.

One item at a time: `generate` on the chat-formatted prompt, then a second full forward over
prompt + generated ids, reading `regr_output` at the last position. pollux's engine must give
the same greedy text and the same score (within float tolerance) without that second pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem


@torch.inference_mode()
def model_card_judge(
    model: Any,
    tokenizer: Any,
    item: JudgeItem,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    template: PromptTemplate | None = None,
) -> dict[str, Any]:
    """Judge one item the model card's way; returns text, score, token counts and time."""
    started = time.perf_counter()
    text = chat_text(tokenizer, (template or PromptTemplate()).render(item))
    inputs = tokenizer([text], return_tensors="pt").to(model.device)
    sequence_ids = model.generate(
        **inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None, do_sample=False
    )
    prompt_len = inputs["input_ids"].shape[1]
    generated = sequence_ids[0][prompt_len:]
    score = None
    if hasattr(model, "regression_head"):
        score = model(input_ids=sequence_ids).regr_output.item()
    return {
        "text": tokenizer.decode(generated, skip_special_tokens=True),
        "score": score,
        "prompt_tokens": prompt_len,
        "completion_tokens": int(generated.shape[0]),
        # the second forward re-encodes the whole sequence
        "prefilled_tokens": prompt_len + (int(sequence_ids.shape[1]) if score is not None else 0),
        "time_s": time.perf_counter() - started,
    }


# Runs a script with site-packages on the path but without processing .pth files (-S), so an
# editable install of pollux is invisible; it fails loudly if pollux is importable anyway.
_WITHOUT_POLLUX = """
import importlib.util, runpy, sys
sys.path.append({site!r})
assert importlib.util.find_spec("pollux") is None, "pollux must not be importable here"
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


SNIPPET_GENERATE = "model.generate(**model_inputs, max_new_tokens=4096)"  # the card's call


def run_model_card_snippet(script: str | Path, model_path: str | Path, *, cwd: str | Path,
                           timeout: float = 900, max_new_tokens: int | None = None) -> tuple[str, float]:
    """Run the model card's snippet (`examples/model_card_snippet.py`) in a subprocess where pollux
    cannot be imported; return what it prints: the rationale and the score.

    `max_new_tokens` runs a copy of the script (in `cwd`) whose `generate` call asks for that many
    tokens instead of 4096 — nothing else changes — so a quick check need not generate 4096."""
    if max_new_tokens is not None:
        source = Path(script).read_text(encoding="utf-8")
        if source.count(SNIPPET_GENERATE) != 1:
            raise ValueError(f"{script}: expected {SNIPPET_GENERATE!r} exactly once")
        script = Path(cwd) / Path(script).name
        script.write_text(source.replace(SNIPPET_GENERATE, SNIPPET_GENERATE.replace("4096", str(max_new_tokens))),
                          encoding="utf-8")
    boot = _WITHOUT_POLLUX.format(site=sysconfig.get_paths()["purelib"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", boot, str(script), str(model_path)],
                          capture_output=True, cwd=cwd, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the model card snippet failed:\n{proc.stderr.decode(errors='replace')[-3000:]}")
    # bytes, not text mode: a generated "\r" must not be turned into "\n"
    *text, score = proc.stdout.decode("utf-8").removesuffix("\n").split("\n")
    return "\n".join(text), float(score)


def model_card_snippet_literals(script: str | Path) -> dict[str, Any]:
    """The snippet's literal assignments (its item's texts and its prompt template), read without
    running it — so `pollux judge` can be asked about the very item the snippet judges."""
    import ast

    tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    return {node.targets[0].id: node.value.value for node in tree.body  # type: ignore[attr-defined]
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
