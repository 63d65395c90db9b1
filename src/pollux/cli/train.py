"""`pollux train`: train a judge (LM head + regression head, CE + MSE) on JSONL / Parquet rows.

A thin shell over `pollux.train`. Under `accelerate launch` use the module form, which runs this
same command: `accelerate launch --config_file configs/accelerate/fsdp.yaml -m pollux.train …`.
Progress goes to stderr as JSON lines; the run's summary (final judge folder, data report, last
losses and validation metrics) is printed to stdout as one JSON object by the main process.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def train_command(
    model: str = typer.Option(..., "--model", "-m", help="Judge or base checkpoint folder to start from."),
    train_file: Path = typer.Option(..., "--train", help="Training rows (.jsonl or .parquet): instruction, "
                                    "reference_answer, answer, criteria_name, rubrics, rationale, score."),
    output_dir: Path = typer.Option(..., "--output", "-o", help="Folder for checkpoints, logs and final/."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Validation rows (same format)."),
    template: Path | None = typer.Option(None, help="Prompt template file (default: the POLLUX template)."),
    max_length: int = typer.Option(4096, help="Drop (and count) rows longer than this many tokens."),
    skip_bad_rows: bool = typer.Option(False, help="Leave out bad rows (counted) instead of stopping."),
    regr_weight: float = typer.Option(1.0, help="loss = CE + regr_weight · MSE."),
    lr: float = typer.Option(1e-5, help="Peak learning rate; decays linearly to 0."),
    warmup_steps: int = typer.Option(0, help="Linear warm-up steps."),
    weight_decay: float = typer.Option(0.0),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping (0: off)."),
    batch_size: int = typer.Option(256, help="Effective batch: rows per optimiser step over all processes."),
    micro_batch_size: int = typer.Option(4, help="Rows per forward per process (accumulation makes up the rest)."),
    epochs: float = typer.Option(3.0),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimiser steps (overrides epochs)."),
    stop_after: int | None = typer.Option(None, help="End this invocation after N steps with a checkpoint "
                                          "(the schedule spans the whole run); continue with --resume-from latest."),
    precision: str = typer.Option("auto", help="auto (bf16 on GPUs that support it, else fp32), bf16, fp32."),
    seed: int = typer.Option(0),
    eval_every: int = typer.Option(0, help="Validate every N steps (and at start and end); 0: at the end only."),
    eval_batch_size: int = typer.Option(16),
    log_every: int = typer.Option(1),
    save_every: int = typer.Option(0, help="Write a resumable checkpoint every N steps (0: none)."),
    save_total_limit: int | None = typer.Option(None, help="Keep only the newest N checkpoints."),
    resume_from: str | None = typer.Option(None, help="A checkpoint folder, or 'latest' in --output."),
    lora_r: int = typer.Option(0, help="LoRA rank (0: full fine-tuning)."),
    lora_alpha: int = typer.Option(16),
    lora_dropout: float = typer.Option(0.0),
) -> None:
    """Train a judge; the finished judge is written to OUTPUT/final (loadable by `pollux judge`)."""
    from pollux.train import TrainConfig, TrainDataError, Trainer, TrainError

    try:
        config = TrainConfig(
            model=model, train_file=str(train_file), output_dir=str(output_dir),
            valid_file=str(valid_file) if valid_file else None,
            template_file=str(template) if template else None, max_length=max_length,
            skip_bad_rows=skip_bad_rows, regr_weight=regr_weight, lr=lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm or None, batch_size=batch_size,
            micro_batch_size=micro_batch_size, epochs=epochs, max_steps=max_steps, stop_after=stop_after,
            precision=precision,
            seed=seed, eval_every=eval_every, eval_batch_size=eval_batch_size, log_every=log_every,
            save_every=save_every, save_total_limit=save_total_limit, resume_from=resume_from,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        )
        trainer = Trainer(config)
        result = trainer.run()
    except (TrainDataError, TrainError, ValueError) as e:
        typer.echo(f"pollux train: {e}", err=True)
        raise typer.Exit(2) from None
    if trainer.acc.is_main_process:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
