"""Meta-evaluation: how well judges agree with expert scores (POLLUX-format data).

    from pollux.metaeval import load_experts, read_score_jsonl, meta_evaluate, render
    experts = load_experts("pollux_test.parquet")
    result = meta_evaluate(experts, [read_score_jsonl("judge-a.jsonl")], split="ood")
    print(render(result, "markdown"))

Modules: `experts` (reading expert data), `scores` (judge score sources and score selection),
`domains` (in/out-of-domain split), `groups` (criterion groups), `metrics` (point estimates),
`bootstrap` (answer-level resampling), `evaluate` (the join and the tables' numbers), `tables`
(terminal / Markdown / CSV / HTML / JSON output), `card` (the model card's numbers beside ours),
`pipeline` (`run`: a whole meta-evaluation from its inputs, as `pollux meta-eval` runs it).
"""

from pollux.metaeval.domains import DEFAULT_OOD_TASKS, parse_ood_tasks
from pollux.metaeval.evaluate import AVG, MetaEvalResult, meta_evaluate
from pollux.metaeval.experts import ExpertData, MetaEvalWarning, load_experts
from pollux.metaeval.metrics import LABELS, METRICS
from pollux.metaeval.pipeline import JudgeRun, MetaEvalRun, run
from pollux.metaeval.scores import (
    SCORE_CHOICES,
    read_score_jsonl,
    scores_from_db,
    scores_from_frame,
    scores_from_judge,
    select_scores,
    write_score_jsonl,
)
from pollux.metaeval.tables import FORMATS, render

__all__ = [
    "AVG",
    "DEFAULT_OOD_TASKS",
    "FORMATS",
    "LABELS",
    "METRICS",
    "SCORE_CHOICES",
    "ExpertData",
    "JudgeRun",
    "MetaEvalResult",
    "MetaEvalRun",
    "MetaEvalWarning",
    "load_experts",
    "meta_evaluate",
    "parse_ood_tasks",
    "read_score_jsonl",
    "render",
    "run",
    "scores_from_db",
    "scores_from_frame",
    "scores_from_judge",
    "select_scores",
    "write_score_jsonl",
]
