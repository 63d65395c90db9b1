"""Judge checkpoints: load the official layouts, save ours so the model card's code runs on them.

Two kinds of judge checkpoint:

* regression judges (`-r`): `config.json` says `architectures: ["Qwen2WithRegressionHead"]` with
  `model_type: "qwen2"`; the weights hold `regression_head.weight` / `.bias` beside the usual Qwen2
  tensors. We load them with our class directly — never through `AutoModelForCausalLM` without
  `trust_remote_code`, which would silently build a plain `Qwen2ForCausalLM` and drop the head.
  A `-r` checkpoint without head weights is an error, not a warning.
* generative judges (`Qwen2ForCausalLM` and other causal LMs): loaded with
  `AutoModelForCausalLM`; their score is parsed from `[RESULT] n [END]`.

`save_judge` writes safetensors shards with an index, the tokenizer, a greedy generation config,
and — for regression judges — `qwen2_regression.py` plus an `auto_map`, so that
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` works without pollux.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

REGRESSION_ARCH = "Qwen2WithRegressionHead"
MODELING_FILE = Path(__file__).parent / "modeling" / "qwen2_regression.py"
AUTO_MAP = {"AutoModelForCausalLM": "qwen2_regression.Qwen2WithRegressionHead"}
HEAD_KEYS = ("regression_head.weight", "regression_head.bias")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as a judge; the message says what is wrong and where."""


@dataclass
class LoadedJudge:
    model: Any
    tokenizer: Any
    kind: str  # "regression" or "generative"
    path: str


def read_config(path: str | Path) -> dict[str, Any]:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no config.json — not a model checkpoint folder")
    return json.loads(cfg.read_text(encoding="utf-8"))


def judge_kind(config: dict[str, Any]) -> str:
    return "regression" if REGRESSION_ARCH in (config.get("architectures") or []) else "generative"


def weight_names(path: str | Path) -> set[str] | None:
    """Tensor names stored in a safetensors checkpoint (sharded or not); None for other formats."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = path / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return set(f.keys())
    return None


def resolve_dtype(dtype: str | Any, device: str) -> Any:
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        # bf16 where the hardware runs it well (CUDA); float32 on CPUs.
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


# One checkpoint load at a time per process: transformers 4.x keeps loading state in globals (e.g.
# its no-init-weights switch), so two threads loading judges at once (`--workers 2` on threads) can
# leave a regression head on the meta device. Loading is disk- and memory-bound anyway.
_LOADING = threading.Lock()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_model(path: Path, kind: str, torch_dtype: Any) -> Any:
    """The model of a checkpoint folder; a `-r` checkpoint through our class, with its head checked."""
    if kind == "regression":
        names = weight_names(path)
        if names is not None:
            missing = [k for k in HEAD_KEYS if k not in names]
            if missing:
                raise CheckpointError(
                    f"{path}: config.json declares {REGRESSION_ARCH} but the weights lack "
                    f"{', '.join(missing)} — the regression head is missing from this checkpoint"
                )
        from pollux.modeling.qwen2_regression import Qwen2WithRegressionHead

        # with output_loading_info, from_pretrained returns (model, info); its annotation says model only
        model, info = cast(tuple[Any, dict[str, list[str]]], Qwen2WithRegressionHead.from_pretrained(
            path, dtype=torch_dtype, output_loading_info=True))
        lost = [k for k in info.get("missing_keys", []) if k.startswith("regression_head")]
        # transformers 4.x does not report a tensor the index lists but its shard lacks: it stays
        # on the meta device (no data) until `.to()` fails with a message that names nothing
        lost += [f"regression_head.{n}" for n, p in model.regression_head.named_parameters()
                 if p.is_meta and f"regression_head.{n}" not in lost]
        if lost:
            raise CheckpointError(f"{path}: regression head weights not loaded: {', '.join(sorted(lost))}")
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model


def load_judge(path: str | Path, *, dtype: str | Any = "auto", device: str = "auto") -> LoadedJudge:
    """Load a judge checkpoint folder (official `-r` layout, a pollux-saved one, or a plain
    causal LM) with its tokenizer, in eval mode."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: not a local checkpoint folder (pollux never downloads weights; pass a path)"
        )
    config = read_config(path)
    kind = judge_kind(config)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    with _LOADING:  # see _LOADING
        model = _load_model(path, kind, torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise CheckpointError(f"{path}: the tokenizer has no chat template; POLLUX judges read ChatML")
    model.to(device).eval()
    return LoadedJudge(model=model, tokenizer=tokenizer, kind=kind, path=str(path))


def save_judge(
    model: Any, tokenizer: Any, path: str | Path, *, max_shard_size: str | int = "2GB", state_dict: Any = None
) -> Path:
    """Save a judge so that both pollux and the model card's snippet load it. `state_dict`: weights
    gathered elsewhere (FSDP training saves a full state dict gathered across processes)."""
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    regression = hasattr(model, "regression_head")
    if regression:
        model.config.architectures = [REGRESSION_ARCH]
        model.config.auto_map = dict(AUTO_MAP)
    model.save_pretrained(path, max_shard_size=max_shard_size, safe_serialization=True, state_dict=state_dict)
    if regression:
        shutil.copyfile(MODELING_FILE, path / MODELING_FILE.name)
        # save_pretrained may drop auto_map when the class lives in an installed package: restore it.
        cfg_file = path / "config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cfg["auto_map"] = dict(AUTO_MAP)
        cfg["architectures"] = [REGRESSION_ARCH]
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(path)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    eos = [i for i in eos if isinstance(i, int) and i >= 0] or [tokenizer.eos_token_id]
    GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False
    ).save_pretrained(path)
    return path
