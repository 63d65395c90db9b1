"""Training judges: an LM head for the rationale and a regression head for the score (CE + MSE).

    from pollux.train import TrainConfig, train
    result = train(TrainConfig(model="judge-or-base/", train_file="train.jsonl", output_dir="out/"))
    result.final_dir  # a judge folder: `pollux judge --model out/final`

The same code runs in one process and under `accelerate launch` (DDP, FSDP). See docs/training.md.
"""

from pollux.train.config import TrainConfig
from pollux.train.data import DataReport, Example, TrainDataError, collate, load_examples, target_text
from pollux.train.trainer import Trainer, TrainError, TrainResult, head_metrics, train

__all__ = [
    "DataReport",
    "Example",
    "TrainConfig",
    "TrainDataError",
    "TrainError",
    "TrainResult",
    "Trainer",
    "collate",
    "head_metrics",
    "load_examples",
    "target_text",
    "train",
]
