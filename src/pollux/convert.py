"""A judge checkpoint → a GGUF file llama.cpp runs, with what llama.cpp cannot hold beside it.

`convert_checkpoint(ckpt, out, quant)` writes:

* `OUT` — the GGUF model (f16, q8_0 or q4_k_m), made by **llama.cpp's own converter**
  (`convert_hf_to_gguf.py` from a llama.cpp source tree; pollux writes no converter of its own)
  and, for the quantised types, llama.cpp's quantiser (`llama_model_quantize`, through
  llama-cpp-python). The GGUF carries the tokenizer and its chat template (the converter copies
  both from the checkpoint).
* `OUT.head.safetensors` — `-r` judges only: the regression head (`Linear(hidden, 1)`, float32).
  llama.cpp refuses a GGUF with a tensor its architecture does not declare, so the head travels
  beside the model.
* `OUT.pollux.json` — what pollux needs that a GGUF does not say: the judge kind, the head
  sidecar's name, the checkpoint's `generation_config.json` (end-of-turn ids, repetition
  penalty, …, read by `SamplingParams.resolve` as in-process) and where it came from.

The converter knows `Qwen2ForCausalLM`, not `Qwen2WithRegressionHead`: for a `-r` checkpoint it
reads a temporary plain view (config with `architectures: ["Qwen2ForCausalLM"]`, the shards
without the two head tensors — rewritten only where a shard holds them, linked otherwise).

Where the converter lives: `llama_cpp=DIR` (a llama.cpp source tree, e.g. the `vendor/llama.cpp`
folder of llama-cpp-python's source distribution), else `$POLLUX_LLAMA_CPP`, else
`<venv>/llama.cpp` (where `.ci/gguf-env` puts it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pollux.checkpoint import HEAD_KEYS, CheckpointError, judge_kind, read_config

QUANTS = ("f16", "q8_0", "q4_k_m")
SIDECAR_FORMAT = "pollux-gguf/1"
# Files of a checkpoint the converter reads besides config and weights (tokenizer, chat template).
_COPIED = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
           "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
           "tokenizer.model")


class ConvertError(RuntimeError):
    """The conversion cannot run or failed; the message says what and how to fix it."""


@dataclass
class Converted:
    """What `convert_checkpoint` wrote."""

    gguf: str
    quant: str
    kind: str
    head: str | None  # the head sidecar (-r judges)
    sidecar: str  # OUT.pollux.json
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def head_path(gguf: str | Path) -> Path:
    return Path(f"{gguf}.head.safetensors")


def sidecar_path(gguf: str | Path) -> Path:
    return Path(f"{gguf}.pollux.json")


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` (see the module docstring for where it is looked for)."""
    candidates = [llama_cpp, os.environ.get("POLLUX_LLAMA_CPP"), Path(sys.prefix) / "llama.cpp"]
    for folder in candidates:
        if folder and (Path(folder) / "convert_hf_to_gguf.py").is_file():
            return Path(folder) / "convert_hf_to_gguf.py"
    tried = ", ".join(str(c) for c in candidates if c)
    raise ConvertError(
        "llama.cpp's converter (convert_hf_to_gguf.py) was not found (looked in: "
        f"{tried}): pass --llama-cpp DIR, a llama.cpp source tree (e.g. vendor/llama.cpp in "
        "llama-cpp-python's source distribution), or set $POLLUX_LLAMA_CPP; .ci/gguf-env puts one "
        "in .venv-gguf/llama.cpp")


def plain_view(ckpt: Path, work: Path) -> Path:
    """A `Qwen2ForCausalLM` view of a `-r` checkpoint in `work` (see the module docstring).
    Returns the head tensors' source shard set aside: the head itself is read by `write_head`."""
    config = read_config(ckpt)
    config["architectures"] = ["Qwen2ForCausalLM"]
    config.pop("auto_map", None)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    for name in _COPIED:
        if (ckpt / name).is_file():
            shutil.copyfile(ckpt / name, work / name)
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        shards = sorted(set(data["weight_map"].values()))
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k not in HEAD_KEYS}
        (work / index.name).write_text(json.dumps(data, indent=2), encoding="utf-8")
    elif (ckpt / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{ckpt}: no safetensors weights (model.safetensors or an index)")
    for shard in shards:
        _copy_without_head(ckpt / shard, work / shard)
    return work


def _copy_without_head(src: Path, dst: Path) -> None:
    """A shard without the head tensors: linked when it holds none, rewritten otherwise."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        names = list(f.keys())
        if not any(n in HEAD_KEYS for n in names):
            os.symlink(src.resolve(), dst)
            return
        tensors = {n: f.get_tensor(n) for n in names if n not in HEAD_KEYS}
        metadata = f.metadata()
    save_file(tensors, str(dst), metadata=metadata)


def write_head(ckpt: Path, out: Path) -> Path:
    """The regression head as float32 safetensors beside the GGUF."""
    from safetensors.numpy import save_file

    from pollux.engine.vllm_engine import read_head  # reads sharded and single-file checkpoints

    weight, bias = read_head(ckpt)
    target = head_path(out)
    save_file({HEAD_KEYS[0]: weight.numpy(), HEAD_KEYS[1]: bias.numpy()}, str(target),
              metadata={"format": SIDECAR_FORMAT, "source": str(ckpt)})
    return target


def run_converter(converter: Path, model_dir: Path, out: Path, outtype: str) -> None:
    """`python convert_hf_to_gguf.py MODEL --outfile OUT --outtype T` in a subprocess (its own
    gguf-py first on the path, as the script itself arranges)."""
    cmd = [sys.executable, str(converter), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ConvertError(f"llama.cpp's converter failed (exit {proc.returncode}):\n{tail}")


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantiser on an f16 GGUF (llama-cpp-python's `llama_model_quantize` binding)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConvertError("quantising needs llama-cpp-python: pip install 'pollux[gguf]'") from exc
    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise ConvertError(f"llama_model_quantize({quant}) failed (code {rc}); see llama.cpp's log above. "
                           "k-quants need rows whose length is a multiple of 256 (hidden and intermediate sizes)")


def convert_checkpoint(ckpt: str | Path, out: str | Path, quant: str = "f16", *,
                       llama_cpp: str | Path | None = None, threads: int | None = None) -> Converted:
    """`ckpt` (a judge checkpoint folder) → `out` (GGUF) + sidecars; see the module docstring."""
    ckpt, out = Path(ckpt), Path(out)
    if quant not in QUANTS:
        raise ConvertError(f"unknown quantisation {quant!r}: use one of {', '.join(QUANTS)}")
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a checkpoint folder")
    kind = judge_kind(read_config(ckpt))
    converter = find_converter(llama_cpp)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pollux-convert-", dir=out.parent) as tmp:
        source = plain_view(ckpt, Path(tmp) / "plain") if kind == "regression" else ckpt
        f16 = out if quant == "f16" else Path(tmp) / "model-f16.gguf"
        run_converter(converter, source, f16, "f16")
        if quant != "f16":
            quantize(f16, out, quant, threads)
    head = write_head(ckpt, out) if kind == "regression" else None
    gen_file = ckpt / "generation_config.json"
    sidecar = {
        "format": SIDECAR_FORMAT, "kind": kind, "quant": quant, "source": str(ckpt.resolve()),
        "architecture": (read_config(ckpt).get("architectures") or ["?"])[0],
        "head": head.name if head else None,
        "generation_config": json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else None,
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Converted(gguf=str(out), quant=quant, kind=kind, head=str(head) if head else None,
                     sidecar=str(sidecar_path(out)), bytes=out.stat().st_size)
