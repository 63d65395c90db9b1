"""GGUF engine benchmark (issue 21): score drift of q8_0 / q4_k_m against f16, parity of f16 with the
in-process engine, judgements/s of gguf q4_k_m vs the in-process engine (float32) on the same
items, and prompt tokens evaluated with and without prefix reuse.

    python bench/bench_gguf.py                        # builds a peaked tiny -r judge (hidden 256)
    python bench/bench_gguf.py --checkpoint PATH      # any -r judge, e.g. one from `pollux train`
    python bench/bench_gguf.py --checkpoint PATH --rows test.jsonl --template T.txt
                                                      # ... on its held-out rows (with known `score`s)

With `--rows`, the items are those rows (POLLUX columns, one criterion each) and every method's head
scores are also compared with the rows' known scores (Spearman, MAE).

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


def load_rows(path: Path) -> tuple[list[Any], list[float]]:
    """Held-out rows (JSONL, POLLUX columns and a known `score`) as items, and their scores."""
    import json

    from pollux.records import JudgeItem

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ([JudgeItem.from_dict(r, where=f"{path}:{n}") for n, r in enumerate(rows, 1)],
            [float(r["score"]) for r in rows])


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


def run_method(method: str, path: str, work: list[Any], template: str | None, new_tokens: int, threads: int,
               share_prefix: bool = True) -> dict[str, Any]:
    """One engine over the items `work`, in its own process (see `isolated`): texts, scores, wall
    and CPU seconds, prompt tokens evaluated. `template`: a prompt template file (default: pollux's)."""
    from pollux.engine import SamplingParams
    from pollux.prompts import PromptTemplate

    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    prompt = PromptTemplate(text=Path(template).read_text(encoding="utf-8")) if template else None
    if method == "in-process":
        import torch

        from pollux.engine.hf import TransformersEngine

        torch.set_num_threads(threads)
        engine: Any = TransformersEngine.from_pretrained(path, dtype="float32", device="cpu", sampling=sampling,
                                                         template=prompt)
    else:
        from pollux.engine.gguf import GGUFEngine

        engine = GGUFEngine(path, sampling=sampling, threads=threads, share_prefix=share_prefix, template=prompt)
    wall, c = time.perf_counter(), cpu()
    verdicts = engine.judge_many(work)
    wall, c = time.perf_counter() - wall, cpu() - c
    stats = getattr(engine, "stats", {})
    return {"texts": [v.raw_text for v in verdicts], "scores": [v.head_score for v in verdicts], "wall": wall,
            "cpu": c, "evaluated": stats.get("prompt_tokens_evaluated"), "prompt": stats.get("prompt_tokens"),
            "new_tokens": sum(v.completion_tokens or 0 for v in verdicts) / max(1, len(verdicts)),
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
    return (f"texts identical {len(same)}/{len(a)} ({len(same) / len(a):.1%}), MAE {sum(diffs) / len(a):.2e}, "
            f"max |Δ| {max(diffs):.2e} (identical texts only: {max(same, default=float('nan')):.2e}), "
            f"Spearman {spearmanr(a, b).statistic:.4f}")


def against_known(run: dict[str, Any], known: list[float]) -> str:
    """Head scores against the rows' known scores (`pollux.train.head_metrics`: Spearman, MAE)."""
    from pollux.train import head_metrics

    m = head_metrics(run["scores"], known)
    rho = "n/a" if m["spearman"] is None else f"{m['spearman']:.4f}"
    return f"Spearman {rho}, MAE {m['mae']:.4f}"


def tensor_types(gguf: Path) -> str:
    """The GGUF's tensor types and how many of each (llama.cpp's gguf-py, beside its converter):
    shows where the quantiser fell back from a k-quant (rows not a multiple of 256)."""
    import sys
    from collections import Counter

    from pollux.convert import find_converter

    sys.path.insert(0, str(find_converter().parent / "gguf-py"))
    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(str(gguf)).tensors)
    return ", ".join(f"{n} × {k}" for k, n in counts.most_common())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="A -r judge folder (default: build a peaked tiny one).")
    p.add_argument("--rows", type=Path, help="Held-out rows (JSONL with a known `score`) as the items "
                   "(default: answers × 8 criteria of a built-in prompt).")
    p.add_argument("--template", type=Path, help="The judge's prompt template file (default: pollux's).")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--answers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=6, help="Sentences per instruction (prompt length).")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--random", action="store_true", help="Do not overfit the built judge (for speed only: a "
                   "random judge's texts part between engines, so its drift figures mean little).")
    return p.parse_args()


def convert_all(ckpt: Path, root: Path) -> dict[str, Path]:
    """f16, q8_0 and q4_k_m GGUFs of `ckpt` in `root`; prints their sizes and tensor types."""
    from pollux.convert import convert_checkpoint

    files = {q: root / f"judge-{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
    for q, f in files.items():
        convert_checkpoint(ckpt, f, q)
    print("GGUF sizes: " + ", ".join(f"{q} {f.stat().st_size / 2**20:.1f} MiB" for q, f in files.items()))
    for q, f in files.items():
        print(f"  {q} tensor types: {tensor_types(f)}")
    return files


def report(runs: dict[str, dict[str, Any]], n: int, known: list[float] | None) -> None:
    print(f"{'method':<26}{'judgements/s':>13}{'wall s':>9}{'CPU s':>9}{'new tok/item':>13}"
          f"{'prompt tokens evaluated':>26}")
    for name, r in runs.items():
        evaluated = f"{r['evaluated']} of {r['prompt']}" if r["evaluated"] is not None else ""
        print(f"{name:<26}{n / r['wall']:>13.2f}{r['wall']:>9.2f}{r['cpu']:>9.2f}{r['new_tokens']:>13.1f}"
              f"{evaluated:>26}" + (f"  errors: {r['errors'][:1]}" if r["errors"] else ""))
    print(f"gguf f16 vs in-process float32: {drift(runs['in-process float32'], runs['gguf f16'])}")
    for q in ("q8_0", "q4_k_m"):
        print(f"gguf {q} vs gguf f16: {drift(runs['gguf f16'], runs[f'gguf {q}'])}")
    if known is not None:
        for name in ("in-process float32", "gguf f16", "gguf q8_0", "gguf q4_k_m"):
            print(f"{name} vs the known scores: {against_known(runs[name], known)}")
    ref, q4 = runs["in-process float32"], runs["gguf q4_k_m"]
    print(f"gguf q4_k_m vs in-process float32: {ref['wall'] / q4['wall']:.2f}× judgements/s "
          f"(CPU time: {ref['cpu'] / q4['cpu']:.2f}×)")


def main() -> None:
    # llama.cpp's AMX kernels die with SIGILL on VMs that do not enable AMX (this project's machines):
    # without its extra weight buffers unless told otherwise (pollux.engine.gguf._model_params)
    os.environ.setdefault("POLLUX_GGUF_EXTRA_BUFFERS", "0")
    a = parse_args()
    work, known = load_rows(a.rows) if a.rows else (items(a.answers, a.repeat), None)
    template = str(a.template) if a.template else None
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        root = Path(tmp)
        ckpt = a.checkpoint or build_judge(root, a.hidden, a.layers, peaked=not a.random)
        built = f"{'random' if a.random else 'peaked'} tiny -r, hidden {a.hidden}, {a.layers} layers"
        what = f"{a.rows.name} rows" if a.rows else f"{a.answers} answers × {len(CRITERIA)} criteria"
        print(f"judge: {ckpt if a.checkpoint else built}; {len(work)} judgements ({what}), "
              f"≤ {a.new_tokens} new tokens, greedy, {a.threads} threads, each engine in its own process")
        files = convert_all(ckpt, root)
        args = (work, template, a.new_tokens, a.threads)
        runs = {"in-process float32": isolated("in-process", str(ckpt), *args)}
        for q, f in files.items():
            runs[f"gguf {q}"] = isolated("gguf", str(f), *args)
        runs["gguf q4_k_m, no prefix"] = isolated("gguf", str(files["q4_k_m"]), *args, share_prefix=False)
    report(runs, len(work), known)


if __name__ == "__main__":
    main()
