"""GGUF engine benchmark (issue 21): score drift of q8_0 / q4_k_m against f16, parity of f16 with the
in-process engine, judgements/s of gguf q4_k_m vs the in-process engine (float32) on the same
items, and prompt tokens evaluated with and without prefix reuse.

    python bench/bench_gguf.py                        # builds a peaked tiny -r judge (hidden 256)
    python bench/bench_gguf.py --checkpoint PATH      # any -r judge, e.g. one from `pollux train`

Needs llama-cpp-python and llama.cpp's converter (.ci/gguf-env builds both into .venv-gguf). The
default judge is `pollux.fixtures.build_tiny_judge` with a shape llama.cpp's k-quants accept (rows
a multiple of 256: hidden 256, intermediate 768; the tests' hidden-64 judge is not k-quantisable
and llama.cpp falls back to other types for its tensors), overfitted like the tests' peaked judge
(`build_scoring_judge`) so that greedy text is stable. Each engine runs the same items once, in
this process, one after the other (not a timed test; a shared machine's load shows in wall time,
so CPU time is printed too).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

RUBRICS = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
CRITERIA = ["Правильность ответа", "Полнота", "Грамотность", "Краткость", "Вежливость", "Логичность",
            "Связность", "Фактическая точность"]
BASE = ("Объясни, почему небо голубое, и приведи пример из повседневной жизни. ",
        "Солнечный свет рассеивается молекулами воздуха; короткие волны рассеиваются сильнее. ")


def items(answers: int, repeat: int) -> list[Any]:
    from pollux.records import JudgeItem

    out = []
    for a in range(answers):
        instruction = f"Вопрос {a + 1}. " + BASE[0] * repeat
        answer = f"Ответ {a + 1}. " + BASE[1] * (repeat + a)
        out += [JudgeItem(instruction=instruction, answer=answer, criteria_name=c, rubrics=RUBRICS) for c in CRITERIA]
    return out


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_method(method: str, path: str, answers: int, repeat: int, new_tokens: int, threads: int,
               share_prefix: bool = True) -> dict[str, Any]:
    """One engine over the workload, in its own process (see `main`): texts, scores, wall and CPU
    seconds, prompt tokens evaluated."""
    from pollux.engine import SamplingParams

    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    if method == "in-process":
        import torch

        from pollux.engine.hf import TransformersEngine

        torch.set_num_threads(threads)
        engine: Any = TransformersEngine.from_pretrained(path, dtype="float32", device="cpu", sampling=sampling)
    else:
        from pollux.engine.gguf import GGUFEngine

        engine = GGUFEngine(path, sampling=sampling, threads=threads, share_prefix=share_prefix)
    work = items(answers, repeat)
    wall, c = time.perf_counter(), cpu()
    verdicts = engine.judge_many(work)
    wall, c = time.perf_counter() - wall, cpu() - c
    stats = getattr(engine, "stats", {})
    return {"texts": [v.raw_text for v in verdicts], "scores": [v.head_score for v in verdicts], "wall": wall,
            "cpu": c, "evaluated": stats.get("prompt_tokens_evaluated"), "prompt": stats.get("prompt_tokens"),
            "errors": [v.error for v in verdicts if v.error]}


def isolated(*args: Any, **kw: Any) -> dict[str, Any]:
    """`run_method` in a fresh process: each engine's time and memory are its own, and torch's and
    llama.cpp's thread pools never share a process."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_method, args, kw)


def build_judge(root: Path, hidden: int, layers: int, peaked: bool) -> Path:
    """A random -r judge; `peaked`: overfitted for 35 Adam steps to write `[FEEDBACK] … [RESULT] n
    [END]` (`build_scoring_judge`, the tests' recipe), so that greedy text is stable and the
    engines' texts mostly agree. (Overfitting it on the benchmark's own 32 long prompts took over
    10 minutes on the shared 2 cores: not done.)"""
    from pollux.fixtures import build_scoring_judge, build_tiny_judge

    random = build_tiny_judge(root / "random", hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=1,
                              intermediate=3 * hidden, initializer_range=0.1, head_std=0.05)
    return build_scoring_judge(random, root / "peaked") if peaked else random


def drift(ref: dict[str, Any], got: dict[str, Any]) -> str:
    """Texts identical, and the head scores' MAE, max |Δ| and Spearman (all items)."""
    from scipy.stats import spearmanr

    a, b = ref["scores"], got["scores"]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    same = [d for d, x, y in zip(diffs, ref["texts"], got["texts"], strict=True) if x == y]
    return (f"texts identical {len(same)}/{len(a)}, MAE {sum(diffs) / len(a):.2e}, max |Δ| {max(diffs):.2e} "
            f"(identical texts only: {max(same, default=float('nan')):.2e}), Spearman {spearmanr(a, b).statistic:.4f}")


def main() -> None:
    # llama.cpp's AMX kernels die with SIGILL on VMs that do not enable AMX (this project's machines):
    # without its extra weight buffers unless told otherwise (pollux.engine.gguf._model_params)
    os.environ.setdefault("POLLUX_GGUF_EXTRA_BUFFERS", "0")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="A -r judge folder (default: build a peaked tiny one).")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--answers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=6, help="Sentences per instruction (prompt length).")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--random", action="store_true", help="Do not overfit the built judge (for speed only: a "
                   "random judge's texts part between engines, so its drift figures mean little).")
    a = p.parse_args()

    from pollux.convert import convert_checkpoint

    work = (a.answers, a.repeat, a.new_tokens, a.threads)
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        root = Path(tmp)
        ckpt = a.checkpoint or build_judge(root, a.hidden, a.layers, peaked=not a.random)
        files = {q: root / f"judge-{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
        for q, f in files.items():
            convert_checkpoint(ckpt, f, q)
        n = a.answers * len(CRITERIA)
        built = f"{'random' if a.random else 'peaked'} tiny -r, hidden {a.hidden}, {a.layers} layers"
        print(f"judge: {ckpt if a.checkpoint else built}; "
              f"{n} judgements ({a.answers} answers × {len(CRITERIA)} criteria), ≤ {a.new_tokens} new tokens, "
              f"greedy, {a.threads} threads, each engine in its own process")
        print("GGUF sizes: " + ", ".join(f"{q} {f.stat().st_size / 2**20:.1f} MiB" for q, f in files.items()))
        runs = {"in-process float32": isolated("in-process", str(ckpt), *work)}
        for q, f in files.items():
            runs[f"gguf {q}"] = isolated("gguf", str(f), *work)
        runs["gguf q4_k_m, no prefix"] = isolated("gguf", str(files["q4_k_m"]), *work, share_prefix=False)

    print(f"{'method':<26}{'judgements/s':>13}{'wall s':>9}{'CPU s':>9}{'prompt tokens evaluated':>26}")
    for name, r in runs.items():
        evaluated = f"{r['evaluated']} of {r['prompt']}" if r["evaluated"] is not None else ""
        print(f"{name:<26}{n / r['wall']:>13.2f}{r['wall']:>9.2f}{r['cpu']:>9.2f}{evaluated:>26}"
              + (f"  errors: {r['errors'][:1]}" if r["errors"] else ""))
    print(f"gguf f16 vs in-process float32: {drift(runs['in-process float32'], runs['gguf f16'])}")
    for q in ("q8_0", "q4_k_m"):
        print(f"gguf {q} vs gguf f16: {drift(runs['gguf f16'], runs[f'gguf {q}'])}")
    ref, q4 = runs["in-process float32"], runs["gguf q4_k_m"]
    print(f"gguf q4_k_m vs in-process float32: {ref['wall'] / q4['wall']:.2f}× judgements/s "
          f"(CPU time: {ref['cpu'] / q4['cpu']:.2f}×)")


if __name__ == "__main__":
    main()
