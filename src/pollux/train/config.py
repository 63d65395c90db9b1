"""Training configuration: every knob of `pollux train` in one dataclass.

One object is written to `train_config.json` in the output folder and stored in each
checkpoint's `trainer_state.json`, so a run can be resumed — and audited — from its files alone.
Defaults follow the POLLUX judges' recipe (model card): CE + MSE with weight 1, AdamW, LR 1e-5
decaying linearly to 0, 3 epochs, effective batch 256, samples over 4,096 tokens dropped, bf16
where the hardware supports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    model: str  # the judge (or base model) checkpoint folder to start from
    train_file: str  # JSONL or Parquet rows: instruction, reference_answer, answer, criteria_name, rubrics, rationale, score
    output_dir: str
    valid_file: str | None = None

    # Prompt and sequence construction
    template_file: str | None = None  # a prompt template file; default: the POLLUX template
    max_length: int = 4096  # rows whose prompt + target exceed this many tokens are dropped (and counted)
    skip_bad_rows: bool = False  # False: any bad row stops training before it starts, listing all of them

    # Objective and optimiser
    regr_weight: float = 1.0  # loss = CE + regr_weight · MSE
    lr: float = 1e-5
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at the last step
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # None or 0: no clipping

    # Batching: `batch_size` sequences per optimiser step over all processes, fed in micro-batches
    # of `micro_batch_size` per process (gradient accumulation makes up the rest).
    batch_size: int = 256
    micro_batch_size: int = 4
    epochs: float = 3.0
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    # End this invocation once this many steps are done (the LR schedule still spans the whole run),
    # writing a checkpoint to resume from: for time-limited jobs (cluster queues).
    stop_after: int | None = None

    precision: str = "auto"  # auto: bf16 mixed precision on CUDA GPUs that support it, else fp32
    seed: int = 0

    # Validation, logging and checkpoints (in optimiser steps; 0 = only at the end)
    eval_every: int = 0
    eval_batch_size: int = 16
    log_every: int = 1
    save_every: int = 0
    save_total_limit: int | None = None  # keep only the newest N step checkpoints
    resume_from: str | None = None  # a checkpoint folder, or "latest" (the newest in output_dir)

    # LoRA through peft (lora_r = 0: full fine-tuning)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        problems = []
        if self.max_length < 8:
            problems.append("max_length must be ≥ 8")
        if self.lr <= 0:
            problems.append("lr must be > 0")
        if self.regr_weight < 0:
            problems.append("regr_weight must be ≥ 0")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.eval_batch_size < 1:
            problems.append("batch sizes must be ≥ 1")
        if self.epochs <= 0 and not self.max_steps:
            problems.append("epochs must be > 0 (or give max_steps)")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be ≥ 1")
        if self.stop_after is not None and self.stop_after < 1:
            problems.append("stop_after must be ≥ 1")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.lora_r < 0:
            problems.append("lora_r must be ≥ 0")
        if min(self.eval_every, self.save_every, self.warmup_steps) < 0 or self.log_every < 1:
            problems.append("eval_every, save_every, warmup_steps must be ≥ 0 and log_every ≥ 1")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
