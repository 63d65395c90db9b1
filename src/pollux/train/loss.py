"""The judge objective: CE on the target tokens + w · MSE of the regression head.

The model's own forward computes `lm_loss` (mean CE over the micro-batch's target tokens) and
`regr_loss` (mean squared error over its rows). Two things make us compute the same terms from
its outputs instead of passing `labels=`:

* **Speed.** With `labels=` the forward computes logits at every position. A judge vocabulary has
  ~152k tokens and most positions are prompt tokens that carry no CE, so on a CPU the LM head over
  all positions is most of a training step. Batches are left-padded (`data.collate`), so every
  target ends at the last position and we ask the forward for the last (longest target + 1)
  positions' logits only (`logits_to_keep`); the hidden states, the head and the CE formula are
  the model's.
* **Exact normalisation under accumulation and data parallelism.** A step's loss must be the mean
  CE over *all* target tokens of the effective batch (every micro-batch, every process) plus w ×
  the mean squared error over all its rows — not a mean of per-micro-batch means, which weights
  short targets up. `step_terms` returns sums; the trainer divides by the step's global token and
  row counts, so one process with batch B and N processes with B/N each give the same loss.

`tests/test_train_loss.py` checks that these terms equal the model's own `lm_loss` / `regr_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from pollux.train.data import IGNORE


@dataclass
class Terms:
    ce_sum: torch.Tensor  # summed CE over target tokens (differentiable)
    se_sum: torch.Tensor  # summed squared error of the head (differentiable; 0 without a head)
    n_tokens: int  # target tokens in the micro-batch
    n_rows: int
    regr_output: torch.Tensor | None  # the head's scores, detached


def step_terms(model: Any, batch: dict[str, torch.Tensor], *, regression: bool) -> Terms:
    """Forward one micro-batch (right-padded, from `data.collate`) and return loss sums."""
    labels = batch["labels"]
    has_target = labels != IGNORE
    if not bool(has_target.any()):
        raise ValueError("a micro-batch without target tokens")
    # Left padding ends every row with its target. The logit at position p predicts token p + 1,
    # so the last (longest target + 1) positions are all the LM head has to compute.
    keep = int(has_target.sum(dim=1).max()) + 1
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=keep)
    logits = out.logits.float()
    # Targets shifted by one; the last kept position predicts nothing. (Padding the targets
    # instead of slicing the logits spares a full-size gradient copy on the backward pass.)
    targets = F.pad(labels[:, labels.shape[1] - keep + 1 :], (0, 1), value=IGNORE).to(logits.device)
    ce_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    regr_output = getattr(out, "regr_output", None) if regression else None
    if regr_output is not None:
        diff = regr_output.float() - batch["regr_labels"].to(regr_output.device).float()
        se_sum = (diff * diff).sum()
        regr_output = regr_output.detach()
    else:
        se_sum = ce_sum.new_zeros(())
    return Terms(ce_sum=ce_sum, se_sum=se_sum, n_tokens=int(has_target.sum()), n_rows=labels.shape[0],
                 regr_output=regr_output)
