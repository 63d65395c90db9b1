"""Judging expert rows through the run store of `pollux evaluate` (resumable, kill -9 safe).

A meta-evaluation of a big judge on POLLUX is hours of GPU time, so its judgements must survive
a crash and be reused by the next meta-evaluation. Rather than a second store, the rows to judge
are handed to `pollux.evaluate.evaluate` as an ordinary input file (one row per distinct
judgement, id = its content key, in a fixed file name so the records are the same on every
run): it commits each verdict as it arrives, resumes a run with the same judge configuration,
judges only the keys its run does not hold yet, and with a `JudgeLoader` does not even load the
judge when nothing is missing. The scores are then read back with `scores_from_db`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.metaeval.experts import ExpertData
from pollux.metaeval.scores import scores_from_db

# The input file's name is part of a record's identity in the run store (file name, id, model):
# the same name on every run keeps the records (and their jobs) stable across meta-evaluations.
INPUT_NAME = "meta-eval-judgements.jsonl"


def subset(experts: ExpertData, rows: np.ndarray) -> ExpertData:
    """The expert rows selected by a boolean mask (e.g. the splits a table needs)."""
    frame = experts.frame[rows].reset_index(drop=True)
    return ExpertData(frame=frame, annotations=experts.annotations[rows], skipped=experts.skipped,
                      source=experts.source, excluded=experts.excluded)


def judge_through_store(experts: ExpertData, db: str | Path, loader: Any, *, name: str | None = None,
                        log: Callable[[str], None] | None = None, executor: Any = None) -> pd.DataFrame:
    """Judge every distinct judgement of `experts` that the run store `db` lacks (see the module
    doc) and return the run's scores for them as a score frame. `loader`: a
    `pollux.evaluate.JudgeLoader` (or a loaded judge)."""
    from pollux.evaluate import EvaluateError, evaluate

    first = experts.frame.drop_duplicates("key")
    with tempfile.TemporaryDirectory(prefix="pollux-meta-eval-") as tmp:
        path = Path(tmp) / INPUT_NAME
        with path.open("w", encoding="utf-8") as fh:
            for r in first.itertuples(index=False):
                fh.write(json.dumps({"id": r.key, "model_id": r.model_id, "instruction": r.instruction,
                                     "reference_answer": r.reference_answer, "answer": r.answer,
                                     "criteria_name": r.criteria_name, "rubrics": r.rubrics},
                                    ensure_ascii=False) + "\n")
        try:
            summary = evaluate([path], db, loader, log=log, executor=executor)
        except EvaluateError as e:
            raise ValueError(str(e)) from None
    if summary.interrupted:
        raise RuntimeError(f"interrupted: {summary.remaining} judgement(s) left; run the same command again to "
                           "resume (every verdict so far is in the run store)")
    scores = scores_from_db(db)
    run_scores = scores[scores["key"].isin(set(first["key"]))]
    if summary.judge:
        run_scores = run_scores[run_scores["judge"] == summary.judge]
    if name is not None:
        run_scores = run_scores.assign(judge=name)
    return run_scores.reset_index(drop=True)
