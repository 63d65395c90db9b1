"""pollux: criteria-based LLM-as-a-Judge evaluation in Russian.

The data path, one module (or folder) per step:
records → prompts → engine → verdicts → store → reports / meta-evaluation.

Heavy pieces (torch, transformers) are imported lazily, so that `import pollux` and the CLI's
`--help` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Judge", "JudgeItem", "Verdict", "__version__"]

if TYPE_CHECKING:
    from pollux.judge import Judge
    from pollux.records import JudgeItem
    from pollux.verdicts import Verdict


def __getattr__(name: str) -> Any:
    if name == "Judge":
        from pollux.judge import Judge

        return Judge
    if name == "JudgeItem":
        from pollux.records import JudgeItem

        return JudgeItem
    if name == "Verdict":
        from pollux.verdicts import Verdict

        return Verdict
    raise AttributeError(name)
