"""The training loop: plain PyTorch under `accelerate`, so one code path runs everywhere.

* one process (CPU or one GPU): `pollux train …`;
* many processes: `accelerate launch --config_file configs/accelerate/fsdp.yaml -m pollux.train …`
  (FSDP on GPUs, one or many nodes) or `…/cpu-ddp.yaml` (DDP over gloo on CPUs, where FSDP does not run).

A step takes the next `batch_size` rows of the epoch's seeded permutation (the same order for any
number of processes); each process takes its `batch_size / N` share and feeds it in micro-batches
of `micro_batch_size`, synchronising gradients only on the last one. The step's loss is
`CE_sum / target_tokens + w · SE_sum / rows` over the whole effective batch (counts all-reduced
first), so N processes reproduce one process's loss (see `loss.py`). AdamW, linear warm-up then
linear decay to 0, gradient clipping. Trailing rows that do not fill a last batch are skipped in
that epoch (the next epoch's permutation covers them).

Checkpoints (`checkpoint-STEP/`) are judge folders in the `-r` layout (loadable by `pollux judge`
and by the model card's code) plus `trainer_state.json` (step, epoch, history, scheduler) and
`training_state/` (accelerate's optimizer, weights and per-process RNG states), so resuming
continues exactly where the run stopped. The finished judge is written to `final/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pollux.prompts import PromptTemplate
from pollux.train.config import TrainConfig
from pollux.train.data import DataReport, Example, collate, load_examples
from pollux.train.loss import step_terms

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why."""


@dataclass
class TrainResult:
    output_dir: str
    final_dir: str
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per logged step / eval
    data: dict[str, Any] = field(default_factory=dict)
    final_eval: dict[str, Any] | None = None
    stopped_at: str | None = None  # the checkpoint to resume from, when `stop_after` ended the run early

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "final_dir": self.final_dir, "steps": self.steps,
                "stopped_at": self.stopped_at, "data": self.data, "final_eval": self.final_eval,
                "last_train": next((h for h in reversed(self.history) if h.get("kind") == "train"), None)}


def use_bf16(precision: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR factor: linear warm-up to 1, then linear decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def head_metrics(pred: list[float], gold: list[float]) -> dict[str, float | None]:
    """Spearman (ties → average ranks) and MAE of head scores against gold scores."""
    import numpy as np
    from scipy.stats import spearmanr

    p, g = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    mae = float(np.abs(p - g).mean()) if len(p) else None
    rho = None
    if len(p) > 1 and p.std() > 0 and g.std() > 0:
        rho = float(spearmanr(p, g).statistic)
    return {"spearman": rho, "mae": mae}


def find_checkpoint(output_dir: Path, resume_from: str) -> Path:
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / STATE_FILE).is_file():
            raise TrainError(f"{path}: not a pollux training checkpoint (no {STATE_FILE})")
        return path
    found = sorted(
        (p for p in output_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if not found:
        raise TrainError(f"{output_dir}: no checkpoint to resume from")
    return found[-1]


class Trainer:
    def __init__(self, config: TrainConfig, *, accelerator: Any = None):
        from accelerate import Accelerator

        self.config = config
        self.bf16 = use_bf16(config.precision)
        # cpu=True on machines without CUDA: several processes then join over gloo (DDP on CPUs),
        # whichever launcher started them (torchrun, or accelerate's multi-GPU launcher).
        self.acc = accelerator or Accelerator(mixed_precision="bf16" if self.bf16 else "no",
                                              cpu=not torch.cuda.is_available())
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.output_dir = Path(config.output_dir)
        self.history: list[dict[str, Any]] = []
        if config.batch_size % self.world:
            raise TrainError(f"batch_size {config.batch_size} is not divisible by the {self.world} processes")
        if config.lora_r and self.acc.distributed_type.value == "FSDP":
            raise TrainError("LoRA under FSDP is not supported yet: use full fine-tuning, or DDP for LoRA")
        # accelerate turns an FSDP config into plain data parallelism on CPU-only machines, silently.
        fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if fsdp_asked and self.acc.distributed_type.value != "FSDP" and self.acc.is_main_process:
            print(f"warning: the accelerate config asks for FSDP, but this run is {self.acc.distributed_type.value} "
                  "(accelerate uses FSDP on GPUs only): every process holds the whole model", file=sys.stderr,
                  flush=True)

    # ---- setup --------------------------------------------------------------------------------

    def _say(self, record: dict[str, Any]) -> None:
        """Progress goes to stderr (JSON per line) and to train_log.jsonl, from the main process."""
        self.history.append(record)
        if self.acc.is_main_process:
            line = json.dumps(record, ensure_ascii=False)
            print(line, file=sys.stderr, flush=True)
            with (self.output_dir / "train_log.jsonl").open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def _load_model(self):
        from pollux.checkpoint import CheckpointError, load_judge

        try:
            loaded = load_judge(self.config.model, dtype="float32", device="cpu")
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        model, tokenizer = loaded.model, loaded.tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.train()
        if self.config.lora_r:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
                target_modules=list(self.config.lora_target_modules),
                modules_to_save=["regression_head"] if loaded.kind == "regression" else None,
            ))
        return model, tokenizer, loaded.kind

    def _template(self) -> PromptTemplate:
        if self.config.template_file:
            return PromptTemplate(text=Path(self.config.template_file).read_text(encoding="utf-8"))
        return PromptTemplate()

    # ---- batches ------------------------------------------------------------------------------

    def _permutation(self, epoch: int, n: int) -> list[int]:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def _my_micro_batches(self, train: list[Example], step: int, steps_per_epoch: int) -> list[list[Example]]:
        epoch, b = divmod(step, steps_per_epoch)
        bs = self.config.batch_size
        idx = self._permutation(epoch, len(train))[b * bs : (b + 1) * bs]
        share = bs // self.world
        mine = idx[self.rank * share : (self.rank + 1) * share]
        mb = self.config.micro_batch_size
        return [[train[i] for i in mine[k : k + mb]] for k in range(0, len(mine), mb)]

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _sum_all(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        if self.world > 1:
            t = self.acc.reduce(t, reduction="sum")
        return t.tolist()

    # ---- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model, valid: list[Example], pad_id: int, regression: bool) -> dict[str, Any]:
        """Teacher-forced validation: loss terms over all rows and the head's score at `<|im_end|>`
        (after the gold rationale). Every process runs the same number of forwards (FSDP needs it)."""
        from accelerate.utils import gather_object

        model.eval()
        mine = list(range(self.rank, len(valid), self.world))
        bs = self.config.eval_batch_size
        n_batches = math.ceil(math.ceil(len(valid) / self.world) / bs)
        ce = se = tokens = 0.0
        preds: list[tuple[int, float]] = []
        for k in range(n_batches):
            chunk = mine[k * bs : (k + 1) * bs]
            real = len(chunk)
            chunk = chunk or [0]  # a dummy forward keeps the processes in step
            terms = step_terms(model, self._to_device(collate([valid[i] for i in chunk], pad_id)),
                               regression=regression)
            if real:
                ce += float(terms.ce_sum)
                se += float(terms.se_sum)
                tokens += terms.n_tokens
                if terms.regr_output is not None:
                    preds.extend(zip(chunk, terms.regr_output.float().cpu().tolist(), strict=True))
        model.train()
        ce, se, tokens = self._sum_all([ce, se, tokens])
        preds = sorted(gather_object(preds) if self.world > 1 else preds)
        lm = ce / max(tokens, 1)
        result: dict[str, Any] = {"loss": lm, "lm_loss": lm, "n": len(valid)}
        if regression:
            mse = se / len(valid)
            result.update(loss=lm + self.config.regr_weight * mse, regr_loss=mse)
            result.update(head_metrics([p for _, p in preds], [valid[i].score for i, _ in preds]))
        return result

    # ---- checkpoints --------------------------------------------------------------------------

    def _export_judge(self, model, tokenizer, path: Path) -> None:
        """Write a judge folder (the `-r` layout) from the model being trained; LoRA is merged."""
        state_dict = self.acc.get_state_dict(model) if self.acc.distributed_type.value == "FSDP" else None
        if self.acc.is_main_process:
            unwrapped = self.acc.unwrap_model(model)
            if self.config.lora_r:
                import copy

                unwrapped = copy.deepcopy(unwrapped).merge_and_unload()
            from pollux.checkpoint import save_judge

            save_judge(unwrapped, tokenizer, path, state_dict=state_dict)
        self.acc.wait_for_everyone()

    def _save_checkpoint(self, model, tokenizer, scheduler, step: int, info: dict[str, Any]) -> Path:
        path = self.output_dir / f"checkpoint-{step}"
        self._export_judge(model, tokenizer, path)
        self.acc.save_state(str(path / TRAINING_STATE_DIR))
        if self.acc.is_main_process:
            state = {**info, "step": step, "scheduler": scheduler.state_dict(), "history": self.history,
                     "config": self.config.to_dict()}
            (path / STATE_FILE).write_text(json.dumps(state, ensure_ascii=False, indent=1), encoding="utf-8")
            self._prune_checkpoints()
        self.acc.wait_for_everyone()
        return path

    def _prune_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        found = sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        for old in found[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train as the config says: set up (or resume), step to the end — logging, evaluating,
        saving and, with `stop_after`, stopping early on the way — then the final evaluation and the
        finished judge in OUTPUT/final."""
        loop = self._setup()
        resume_from = self.config.resume_from
        start = self._resume(loop, resume_from) if resume_from else self._begin(loop)
        clock = time.time()
        for step in range(start, loop.total):
            stopped = self._step(loop, step, clock)
            if stopped is not None:
                return stopped
        return self._finish(loop)

    def _setup(self) -> _Loop:
        """Seed, the run's config file, the model, the data, the optimizer and its schedule."""
        cfg = self.config
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.acc.is_main_process:
            (self.output_dir / "train_config.json").write_text(
                json.dumps(cfg.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        model, tokenizer, kind = self._load_model()
        train, valid, data = self._load_data(tokenizer, kind)
        steps_per_epoch = len(train) // cfg.batch_size
        if steps_per_epoch < 1:
            raise TrainError(f"{len(train)} usable training rows is fewer than batch_size {cfg.batch_size}")
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

        params = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel is ~10x faster on CPUs (a judge's 152k-token embeddings are most of a
        # small model); FSDP's sharded parameters take the default implementation.
        fused = self.acc.distributed_type.value != "FSDP"
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=fused)
        # Not passed to accelerate: its scheduler wrapper steps N times per call under N processes.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, cfg.warmup_steps))
        model, optimizer = self.acc.prepare(model, optimizer)
        return _Loop(model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, train=train,
                     valid=valid, data=data, pad_id=tokenizer.pad_token_id, regression=kind == "regression",
                     total=total, steps_per_epoch=steps_per_epoch, world=self.world)

    def _load_data(self, tokenizer: Any, kind: str) -> tuple[list[Example], list[Example], dict[str, Any]]:
        """The training and validation examples, and their data reports (also said to the log)."""
        cfg = self.config
        opts: dict[str, Any] = dict(template=self._template(), kind=kind, max_length=cfg.max_length,
                                    skip_bad_rows=cfg.skip_bad_rows)
        train, train_report = load_examples(cfg.train_file, tokenizer, **opts)
        valid: list[Example] = []
        reports: dict[str, DataReport] = {"train": train_report}
        if cfg.valid_file:
            valid, reports["valid"] = load_examples(cfg.valid_file, tokenizer, **opts)
        data = {k: r.to_dict() for k, r in reports.items()}
        self._say({"kind": "data", "world_size": self.world, "distributed": self.acc.distributed_type.value,
                   "precision": "bf16" if self.bf16 else "fp32", "device": str(self.acc.device), **data})
        return train, valid, data

    def _begin(self, loop: _Loop) -> int:
        """A fresh run: the validation loss before any step (when evaluating at all); starts at step 0."""
        if loop.valid and self.config.eval_every:
            self._say({"kind": "eval", "step": 0, **self._evaluate(loop)})
        return 0

    def _resume(self, loop: _Loop, resume_from: str) -> int:
        """A resumed run: model, optimizer, schedule and history from the checkpoint; its step."""
        ckpt = find_checkpoint(self.output_dir, resume_from)
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("total_steps") != loop.total:
            raise TrainError(f"{ckpt}: checkpoint was made for {state.get('total_steps')} total steps, "
                             f"this config gives {loop.total}: resume with the same data, batch and epochs")
        self.acc.load_state(str(ckpt / TRAINING_STATE_DIR))
        loop.scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        self.history = [*state.get("history", []), self.history[-1]]  # old records + this data report
        self._say({"kind": "resume", "from": str(ckpt), "step": start})
        return start

    def _step(self, loop: _Loop, step: int, clock: float) -> TrainResult | None:
        """One optimizer step over the global batch, then what is due after it; a result if the
        run stops here (`stop_after`)."""
        cfg = self.config
        ce_total, se_total, n_tokens = self._accumulate(loop, step)
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = float(self.acc.clip_grad_norm_(loop.model.parameters(), cfg.max_grad_norm))
        lr = loop.scheduler.get_last_lr()[0]
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % cfg.log_every == 0 or done == loop.total:
            ce_all, se_all = self._sum_all([ce_total, se_total])
            lm, mse = ce_all / n_tokens, se_all / cfg.batch_size
            record = {"kind": "train", "step": done, "epoch": round(done / loop.steps_per_epoch, 4),
                      "loss": lm + cfg.regr_weight * mse if loop.regression else lm, "lm_loss": lm,
                      "lr": lr, "grad_norm": grad_norm, "elapsed_s": round(time.time() - clock, 2)}
            if loop.regression:
                record["regr_loss"] = mse
            self._say(record)
        return self._after_step(loop, done)

    def _accumulate(self, loop: _Loop, step: int) -> tuple[float, float, float]:
        """This process's share of the step's batch, micro-batch by micro-batch, gradients summed
        (synchronised on the last one only); its CE and SE sums and the global target-token count."""
        cfg = self.config
        micro = self._my_micro_batches(loop.train, step, loop.steps_per_epoch)
        local_tokens = sum(e.n_target for mb in micro for e in mb)
        n_tokens = self._sum_all([local_tokens])[0]
        ce_total = se_total = 0.0
        for k, mb in enumerate(micro):
            sync = k == len(micro) - 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(loop.model):
                terms = step_terms(loop.model, self._to_device(collate(mb, loop.pad_id)), regression=loop.regression)
                loss = terms.ce_sum / n_tokens + cfg.regr_weight * terms.se_sum / cfg.batch_size
                # Gradients are averaged over processes; scale so that they sum instead.
                self.acc.backward(loss * self.world)
            ce_total += float(terms.ce_sum.detach())
            se_total += float(terms.se_sum.detach())
        return ce_total, se_total, n_tokens

    def _after_step(self, loop: _Loop, done: int) -> TrainResult | None:
        """Evaluation, a checkpoint and an early stop, each when due after step `done` (the last
        step's evaluation and checkpoint are `_finish`'s)."""
        cfg = self.config
        if loop.valid and cfg.eval_every and done % cfg.eval_every == 0 and done != loop.total:
            self._say({"kind": "eval", "step": done, **self._evaluate(loop)})
        saved = cfg.save_every and done % cfg.save_every == 0
        if saved and done != loop.total:
            self._save_checkpoint(loop.model, loop.tokenizer, loop.scheduler, done, loop.info(done))
        if cfg.stop_after and done >= cfg.stop_after and done != loop.total:
            path = self.output_dir / f"checkpoint-{done}"
            if not saved:
                self._save_checkpoint(loop.model, loop.tokenizer, loop.scheduler, done, loop.info(done))
            self._say({"kind": "stopped", "step": done, "checkpoint": str(path)})
            return TrainResult(output_dir=str(self.output_dir), final_dir="", steps=done,
                               history=self.history, data=loop.data, stopped_at=str(path))
        return None

    def _finish(self, loop: _Loop) -> TrainResult:
        """The final evaluation, the last checkpoint (when saving at all) and the finished judge."""
        final_eval = None
        if loop.valid:
            final_eval = {"kind": "eval", "step": loop.total, **self._evaluate(loop)}
            self._say(final_eval)
        if self.config.save_every:
            self._save_checkpoint(loop.model, loop.tokenizer, loop.scheduler, loop.total, loop.info(loop.total))
        final_dir = self.output_dir / "final"
        self._export_judge(loop.model, loop.tokenizer, final_dir)
        self.acc.wait_for_everyone()
        return TrainResult(output_dir=str(self.output_dir), final_dir=str(final_dir), steps=loop.total,
                           history=self.history, data=loop.data, final_eval=final_eval)

    def _evaluate(self, loop: _Loop) -> dict[str, Any]:
        return self.evaluate(loop.model, loop.valid, loop.pad_id, loop.regression)


@dataclass
class _Loop:
    """What the steps of one training run share (`Trainer._setup` builds it)."""

    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train: list[Example]
    valid: list[Example]
    data: dict[str, Any]  # the data reports
    pad_id: int
    regression: bool
    total: int  # steps
    steps_per_epoch: int
    world: int

    def info(self, done: int) -> dict[str, Any]:
        """What a checkpoint after step `done` records about the run."""
        return {"total_steps": self.total, "steps_per_epoch": self.steps_per_epoch, "world_size": self.world,
                "epoch": done / self.steps_per_epoch}


def train(config: TrainConfig) -> TrainResult:
    """Train a judge as `config` says; returns where the finished judge is and the run's history."""
    return Trainer(config).run()
