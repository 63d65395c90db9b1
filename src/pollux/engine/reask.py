"""One re-ask policy for every place pollux asks an LLM again because its reply was unusable (a
judge's reply without a score, a teacher's verdict outside the rubric, …).

A re-ask must change the request: at temperature 0 the same request gives the same text, so
asking again unchanged only spends tokens. Attempt n > 0 therefore samples at a temperature of at
least `REASK_TEMPERATURE` with a new seed (`seed + n`, so a resumed run asks the same thing again).
A conversational judge may instead be told what was wrong (`openai_api`'s "general" style keeps
its temperature and adds a follow-up message); that is the caller's choice, not a second policy.
How often to ask is each caller's option (`max_reasks`, synth's `max_attempts`).
"""

from __future__ import annotations

REASK_TEMPERATURE = 0.3


def reask_sampling(temperature: float, seed: int | None, attempt: int) -> tuple[float, int | None]:
    """(temperature, seed) for attempt `attempt` (0: the first ask, as given)."""
    if attempt == 0:
        return temperature, seed
    return max(temperature, REASK_TEMPERATURE), None if seed is None else seed + attempt
