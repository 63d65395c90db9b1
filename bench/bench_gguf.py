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


def timed(engine: Any, work: list[Any]) -> tuple[list[Any], float, float]:
    wall, c = time.perf_counter(), cpu()
    verdicts = engine.judge_many(work)
    return verdicts, time.perf_counter() - wall, cpu() - c


def build_judge(root: Path, hidden: int, layers: int) -> Path:
    from pollux.fixtures import build_scoring_judge, build_tiny_judge

    random = build_tiny_judge(root / "random", hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=1,
                              intermediate=3 * hidden, initializer_range=0.1, head_std=0.05)
    return build_scoring_judge(random, root / "peaked")


def drift(ref: list[Any], got: list[Any]) -> str:
    from scipy.stats import spearmanr

    a = [v.head_score for v in ref]
    b = [v.head_score for v in got]
    mae = sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
    rho = spearmanr(a, b).statistic
    same = sum(x.raw_text == y.raw_text for x, y in zip(ref, got, strict=True))
    return f"texts identical {same}/{len(a)}, MAE {mae:.2e}, max |Δ| {max(abs(x - y) for x, y in zip(a, b, strict=True)):.2e}, Spearman {rho:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="A -r judge folder (default: build a peaked tiny one).")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--answers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=6, help="Sentences per instruction (prompt length).")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    from pollux.convert import convert_checkpoint
    from pollux.engine import SamplingParams
    from pollux.engine.gguf import GGUFEngine
    from pollux.engine.hf import TransformersEngine

    torch.set_num_threads(a.threads)
    sampling = SamplingParams(max_new_tokens=a.new_tokens, temperature=0)
    work = items(a.answers, a.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        root = Path(tmp)
        ckpt = a.checkpoint or build_judge(root, a.hidden, a.layers)
        files = {q: root / f"judge-{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
        for q, f in files.items():
            convert_checkpoint(ckpt, f, q)
        print(f"judge: {ckpt if a.checkpoint else f'peaked tiny -r, hidden {a.hidden}, {a.layers} layers'}; "
              f"{len(work)} judgements ({a.answers} answers × {len(CRITERIA)} criteria), ≤ {a.new_tokens} new tokens, "
              f"greedy, {a.threads} threads")
        print("GGUF sizes: " + ", ".join(f"{q} {f.stat().st_size / 2**20:.1f} MiB" for q, f in files.items()))
        ref, ref_wall, ref_cpu = timed(TransformersEngine.from_pretrained(
            str(ckpt), dtype="float32", device="cpu", sampling=sampling), work)
        runs: dict[str, Any] = {}
        for q, f in files.items():
            engine = GGUFEngine(f, sampling=sampling, threads=a.threads)
            runs[q] = (*timed(engine, work), engine.stats)
        plain = GGUFEngine(files["q4_k_m"], sampling=sampling, threads=a.threads, share_prefix=False)
        plain_run = (*timed(plain, work), plain.stats)

    print(f"{'method':<26}{'judgements/s':>13}{'wall s':>9}{'CPU s':>9}{'prompt tokens evaluated':>26}")
    print(f"{'in-process float32':<26}{len(work) / ref_wall:>13.2f}{ref_wall:>9.2f}{ref_cpu:>9.2f}{'':>26}")
    for name, (_, wall, c, stats) in [*((f"gguf {q}", r) for q, r in runs.items()),
                                      ("gguf q4_k_m, no prefix", plain_run)]:
        evaluated = f"{stats['prompt_tokens_evaluated']} of {stats['prompt_tokens']}"
        print(f"{name:<26}{len(work) / wall:>13.2f}{wall:>9.2f}{c:>9.2f}{evaluated:>26}")
    print(f"gguf f16 vs in-process float32: {drift(ref, runs['f16'][0])}")
    for q in ("q8_0", "q4_k_m"):
        print(f"gguf {q} vs gguf f16: {drift(runs['f16'][0], runs[q][0])}")
    wall_ratio = ref_wall / runs["q4_k_m"][1]
    cpu_ratio = ref_cpu / runs["q4_k_m"][2]
    print(f"gguf q4_k_m vs in-process float32: {wall_ratio:.2f}× judgements/s (CPU time: {cpu_ratio:.2f}×)")


if __name__ == "__main__":
    main()
