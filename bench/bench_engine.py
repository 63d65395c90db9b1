"""Benchmark: pollux's engine against the model card's loop and what a competent user would write
instead, on the same judgements.

Methods (`--engines`, each in its own child process):

* `card` — the model card's loop: `generate` one item at a time, then a second full forward over
  prompt + rationale for `regr_output`.
* `hf-batched` — Hugging Face batched `generate` over all prompts (left padding, `batch_size` rows
  per call), then one batched forward over prompt + rationale (attention mask and position ids
  from the padding, `logits_to_keep=1`) for the scores.
* `pollux` — pollux's in-process engine (score read in the generation pass, shared prefixes).
* `pollux-no-prefix` — the same engine with prefix sharing off (`share_prefix=False`).
* `vllm` — pollux's vLLM engine (needs vLLM).

Workload (defaults match the throughput issue): a random `Qwen2WithRegressionHead` with Qwen's
real tokenizer and ≥ 20M non-embedding parameters (hidden 512, 8 layers, 8 heads / 2 KV heads,
intermediate 1536, untied, vocab 151,936, fp32); Russian POLLUX-like prompts whose instruction +
answer are ≥ 600 tokens (plus a reference answer); 8 criteria per answer; exactly 64 new tokens
per judgement (end-of-turn suppressed until then, in both methods), greedy.

Each method runs in its own child process so that its peak memory (max RSS) is its own. The
script prints judgements/s for each, every ratio (pollux against each other method), the prompt tokens each prefilled (the card's
loop prefills every prompt, then re-encodes prompt + rationale for the score; pollux prefills one
shared prefix per answer plus each criterion's own suffix — checked against a count made here
from the tokenised prompts), peak memory, and parity (identical texts, max |Δscore|).

    python bench/bench_engine.py                   # the issue's workload (≈ 8 minutes on 2 cores)
    python bench/bench_engine.py --answers 2 --criteria 4 --new-tokens 16   # a quick look
    python bench/bench_engine.py --hidden 3584 --layers 28 --heads 28 --kv-heads 4 --intermediate 18944 \\
        --device cuda --dtype bfloat16 --engines pollux,vllm        # 7B-shaped, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---- the workload ------------------------------------------------------------------------------

SENTENCES = [
    "Городская библиотека открылась после ремонта и теперь работает до десяти вечера.",
    "В читальном зале появились удобные столы, розетки и быстрый беспроводной интернет.",
    "Жители района давно просили продлить часы работы, чтобы приходить после учёбы и смены.",
    "Администрация провела опрос и выяснила, что чаще всего читатели берут детективы и книги по истории.",
    "Для школьников запустили кружок программирования, а для пенсионеров — курсы компьютерной грамотности.",
    "Фонд пополнился тремя тысячами новых изданий, в том числе редкими краеведческими сборниками.",
    "Архитекторы сохранили старинную лестницу и витражи, но заменили проводку и окна.",
    "По выходным в холле проходят встречи с писателями и обсуждения прочитанных книг.",
    "Электронный каталог позволяет заранее забронировать книгу и забрать её в удобное время.",
    "Бюджет ремонта составил около сорока миллионов рублей, часть средств выделил областной фонд.",
]
TASKS = [
    "Прочитай текст и составь по нему подробный пересказ для школьной стенгазеты, сохранив все факты.",
    "Напиши на основе текста официальное письмо в администрацию района с благодарностью и двумя предложениями.",
    "Выдели из текста главные новости и оформи их в виде списка с короткими пояснениями.",
    "Перескажи текст в стиле живого репортажа для городского радио, не искажая цифры.",
]
CRITERIA = [
    ("Отсутствие зацикливаний", 2), ("Отсутствие артефактов", 2),
    ("Формальный учет требований из запроса пользователя", 2), ("Проактивность", 2),
    ("Грамотность", 2), ("Полезность", 2), ("Естественность и несинтетичность речи", 2),
    ("Непротиворечие фактам реального мира", 2), ("Общее впечатление от ответа модели", 2),
    ("Критичное нарушение формата", 1),
]
LEVELS = {
    2: "0: критерий не выполнен: ответ содержит существенные ошибки по этому критерию.\n\n"
       "1: критерий выполнен частично: есть заметные недочёты, но суть соблюдена.\n\n"
       "2: критерий выполнен полностью: замечаний по этому критерию нет.",
    1: "0: нарушения нет, ответ можно оценивать.\n\n1: нарушение есть: ответ нельзя оценить.",
}


def paragraph(seed: int, n_sentences: int) -> str:
    return " ".join(SENTENCES[(seed * 7 + k * 3) % len(SENTENCES)] for k in range(n_sentences))


def make_items(n_answers: int, n_criteria: int, min_tokens: int, tokenizer):
    """n_answers × n_criteria items; each instruction + answer is ≥ min_tokens tokens."""
    from pollux.records import JudgeItem

    items = []
    for a in range(n_answers):
        n = 4
        while True:
            instruction = TASKS[a % len(TASKS)] + "\n\nТекст:\n" + paragraph(a, n)
            answer = paragraph(a + 5, n + 2) + f"\n\nИтог: вариант ответа номер {a + 1}."
            if len(tokenizer(instruction + "\n" + answer)["input_ids"]) >= min_tokens:
                break
            n += 2
        reference = paragraph(a + 11, max(3, n // 3))
        for name, top in CRITERIA[:n_criteria]:
            items.append(JudgeItem(instruction=instruction, answer=answer, reference_answer=reference,
                                   criteria_name=name, rubrics=LEVELS[top]))
    return items


# ---- one method, in a child process -----------------------------------------------------------------


def run_method(args) -> None:
    import torch

    from pollux.checkpoint import load_judge
    from pollux.engine import SamplingParams
    from pollux.engine.reference import model_card_judge

    torch.set_num_threads(args.threads)
    loaded = load_judge(args.model, dtype=args.dtype, device=args.device)
    items = make_items(args.answers, args.criteria, args.min_tokens, loaded.tokenizer)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    results, prefilled = [], 0
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    if args.method == "card":
        for item in items:
            r = model_card_judge(loaded.model, loaded.tokenizer, item,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            results.append({"text": r["text"], "score": r["score"], "prompt_tokens": r["prompt_tokens"]})
            prefilled += r["prefilled_tokens"]
    elif args.method == "hf-batched":
        results, prefilled = hf_batched(loaded, items, args)
    elif args.method in ("pollux", "pollux-no-prefix"):
        from pollux.engine.hf import TransformersEngine

        engine = TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="bench",
                                    sampling=sampling, batch_size=args.batch_size,
                                    max_batch_tokens=args.max_batch_tokens,
                                    share_prefix=args.method == "pollux")
        for v in engine.judge_many(items):
            results.append({"text": v.raw_text, "score": v.head_score, "prompt_tokens": v.prompt_tokens})
        prefilled = engine.stats["prefill_tokens"]
    elif args.method == "vllm":
        from pollux.engine.vllm_engine import VLLMEngine

        engine = VLLMEngine.from_pretrained(args.model, sampling=sampling, dtype=args.dtype,
                                            gpu_memory_utilization=args.gpu_memory_utilization)
        started, cpu_started = time.perf_counter(), _cpu_seconds()  # engine start-up is not judging
        for v in engine.judge_many(items):
            results.append({"text": v.raw_text, "score": v.head_score, "prompt_tokens": v.prompt_tokens})
        prefilled = -1  # vLLM's prefix cache decides; not counted here
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    # the prefill an ideal shared-prefix engine does: one LCP per answer + every suffix
    from pollux.engine.plan import common_prefix_len
    from pollux.prompts import PromptTemplate, chat_text

    ids = [loaded.tokenizer(chat_text(loaded.tokenizer, PromptTemplate().render(it)))["input_ids"] for it in items]
    expected = 0
    for a in range(args.answers):
        group = ids[a * args.criteria : (a + 1) * args.criteria]
        lcp = min(common_prefix_len(group), min(len(g) for g in group) - 1)
        expected += lcp + sum(len(g) - lcp for g in group)
    summary = {"results": results, "elapsed": elapsed, "cpu": cpu, "prefilled": prefilled, "peak_mb": peak_mb,
               "expected_shared_prefill": expected, "judgements": len(items),
               "mean_prompt_tokens": sum(len(i) for i in ids) / len(ids),
               "instruction_answer_tokens": min(
                   len(loaded.tokenizer(it.instruction + "\n" + it.answer)["input_ids"]) for it in items)}
    Path(args.out).write_text(json.dumps(summary))


def _cpu_seconds() -> float:
    """CPU time of this process (user + system, all threads): on a machine shared with other
    jobs it varies far less than wall-clock time, so ratios of it stay comparable."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hf_batched(loaded, items, args) -> tuple[list[dict], int]:
    """What a competent transformers user writes instead of the card's loop: batched `generate`
    with left padding, then one batched forward over prompt + rationale for the head's scores."""
    import torch

    from pollux.prompts import PromptTemplate, chat_text

    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    texts = [chat_text(tok, PromptTemplate().render(it)) for it in items]
    results, prefilled = [], 0
    with torch.inference_mode():
        for a in range(0, len(texts), args.batch_size):
            enc = tok(texts[a : a + args.batch_size], return_tensors="pt", padding=True).to(model.device)
            width = enc["input_ids"].shape[1]
            out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
            generated = out[:, width:]
            # every row generated exactly `new_tokens` (end-of-turn suppressed until then): no padding
            # after the text, so the mask extends with ones and the last position is the last token
            mask = torch.cat([enc["attention_mask"], torch.ones_like(generated)], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            scores = model(input_ids=out, attention_mask=mask, position_ids=positions, logits_to_keep=1).regr_output
            prefilled += int(enc["attention_mask"].sum()) + int(mask.sum())
            for row, gen, score in zip(enc["attention_mask"], generated, scores.float().tolist(), strict=True):
                results.append({"text": tok.decode(gen, skip_special_tokens=True), "score": score,
                                "prompt_tokens": int(row.sum())})
    return results, prefilled


# ---- the parent ----------------------------------------------------------------------------------


def build_model(args, folder: Path) -> Path:
    import torch

    from pollux.fixtures import build_tiny_judge

    path = build_tiny_judge(folder / "judge", hidden=args.hidden, layers=args.layers, heads=args.heads,
                            kv_heads=args.kv_heads, intermediate=args.intermediate, initializer_range=0.5,
                            head_std=0.02, head_bias=1.0, seed=0, max_shard_size="2GB",
                            max_position_embeddings=32768)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    embed = 2 * cfg.vocab_size * cfg.hidden_size  # untied input + output embeddings
    total = sum(t.numel() for t in _tensors(path))
    print(f"model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads / "
          f"{cfg.num_key_value_heads} KV heads, {(total - embed) / 1e6:.1f}M non-embedding parameters "
          f"(torch {torch.__version__}, {args.threads} threads)", flush=True)
    return path


def _tensors(path: Path):
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 — safe_open has no __iter__
                yield st.get_tensor(k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=4)
    p.add_argument("--criteria", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=600, help="instruction + answer tokens, at least")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=1 << 20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--engines", default="card,hf-batched,pollux-no-prefix,pollux",
                   help="comma list of: card, hf-batched, pollux, pollux-no-prefix, vllm")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--model", help="use this checkpoint instead of building a random one")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        return run_method(args)

    with tempfile.TemporaryDirectory(prefix="pollux-bench-") as tmp:
        model = Path(args.model) if args.model else build_model(args, Path(tmp))
        runs = {}
        for method in args.engines.split(","):
            out = Path(tmp) / f"{method}.json"
            cmd = [sys.executable, __file__, "--method", method, "--out", str(out), "--model", str(model)]
            for k in ("answers", "criteria", "new_tokens", "min_tokens", "threads", "batch_size",
                      "max_batch_tokens", "device", "dtype", "gpu_memory_utilization"):
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
            print(f"running {method} …", flush=True)
            subprocess.run(cmd, check=True)
            runs[method] = json.loads(out.read_text())

    first = next(iter(runs.values()))
    print(f"\nworkload: {args.answers} answers × {args.criteria} criteria = {first['judgements']} judgements, "
          f"instruction + answer ≥ {first['instruction_answer_tokens']} tokens, "
          f"prompts {first['mean_prompt_tokens']:.0f} tokens on average, {args.new_tokens} new tokens each")
    print(f"{'method':<16} {'judgements/s':>13} {'seconds':>9} {'CPU seconds':>12} {'prefilled tokens':>17} "
          f"{'peak MB':>9}")
    for name, r in runs.items():
        print(f"{name:<16} {r['judgements'] / r['elapsed']:>13.3f} {r['elapsed']:>9.1f} {r['cpu']:>12.1f} "
              f"{r['prefilled'] if r['prefilled'] >= 0 else 'n/a':>17} {r['peak_mb']:>9.0f}")
    if "card" in runs:  # parity: every method against the model card's loop
        base = runs["card"]
        for name, r in runs.items():
            if name == "card":
                continue
            same = sum(a["text"] == b["text"] for a, b in zip(base["results"], r["results"], strict=True))
            dmax = max(abs(a["score"] - b["score"]) for a, b in zip(base["results"], r["results"], strict=True))
            print(f"{name} vs card: texts identical {same}/{len(base['results'])}; max |Δscore| {dmax:.2e}")
    print()
    names = list(runs)  # every ratio: each method against each one listed before it
    for k, name in enumerate(names):
        for other in names[:k]:
            print(f"{name} vs {other}: {runs[other]['elapsed'] / runs[name]['elapsed']:.2f}× judgements/s "
                  f"(CPU time: {runs[other]['cpu'] / runs[name]['cpu']:.2f}×)")
    if "pollux" in runs:
        r = runs["pollux"]
        ok = r["prefilled"] == r["expected_shared_prefill"]
        print(f"pollux prefilled {r['prefilled']} prompt tokens; one shared prefix per answer + each "
              f"criterion's suffix = {r['expected_shared_prefill']}: {'equal' if ok else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
