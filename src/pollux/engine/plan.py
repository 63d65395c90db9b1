"""Planning a batch run: which prompts share a prefix, and which groups run together.

The criteria of one answer render to prompts that are identical up to the criterion section.
Each prompt is tokenised whole (so token boundaries are exactly those of the full prompt); the
longest common token prefix of a group is what the engine encodes once (`pollux.engine.kv`).
Batches hold whole groups, longest first, bounded by `batch_size` rows and `max_batch_tokens` KV
positions (each shared prefix once, plus one preallocated own buffer per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pollux.engine.jobs import Job


@dataclass
class Group:
    """Jobs whose prompts share `prefix_len` leading tokens (≥ 1 own token each)."""

    jobs: list[Job]
    prefix_len: int

    @property
    def prefix(self) -> list[int]:
        return self.jobs[0].ids[: self.prefix_len]

    def own_capacity(self) -> int:
        """KV slots each member's own part needs: prompt suffix + new tokens + the final feed."""
        return max(len(j.ids) - self.prefix_len + j.max_new + 1 for j in self.jobs)


def alone(job: Job) -> Group:
    """A group of one job that shares nothing: all its prompt but the last token is its prefix
    (the last token yields the first logits)."""
    return Group([job], len(job.ids) - 1)


def batch_kv_tokens(groups: Sequence[Group]) -> int:
    """KV positions a batch allocates: each shared prefix once, plus one own buffer per row
    sized for the batch's longest own part (buffers are preallocated, see `PrefixSharedCache`)."""
    rows = sum(len(g.jobs) for g in groups)
    return sum(g.prefix_len for g in groups) + rows * max(g.own_capacity() for g in groups)


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for other in seqs[1:]:
        i = 0
        limit = min(n, len(other))
        while i < limit and first[i] == other[i]:
            i += 1
        n = i
    return n


def make_groups(jobs: list[Job], share_prefix: bool, batch_size: int, max_batch_tokens: int) -> list[Group]:
    """Group jobs by answer (instruction, reference, answer) — their prompts share everything up to
    the criterion — and split groups that would not fit one batch."""
    if not share_prefix:
        return [alone(j) for j in jobs]
    by_answer: dict[tuple[str, str, str], list[Job]] = {}
    for j in jobs:
        by_answer.setdefault((j.item.instruction, j.item.reference_answer, j.item.answer), []).append(j)
    groups: list[Group] = []
    for members in by_answer.values():
        chunk: list[Job] = []
        for j in members:
            candidate = _shared_group([*chunk, j])
            if chunk and (len(candidate.jobs) > batch_size or batch_kv_tokens([candidate]) > max_batch_tokens):
                groups.append(_shared_group(chunk))
                chunk = []
            chunk.append(j)
        groups.append(_shared_group(chunk))
    return groups


def _shared_group(jobs: list[Job]) -> Group:
    # every member keeps at least one own token: its last prompt token yields the first logits
    shared = min(common_prefix_len([j.ids for j in jobs]), min(len(j.ids) for j in jobs) - 1)
    return Group(jobs, shared)


def pack_batches(groups: list[Group], batch_size: int, max_batch_tokens: int) -> list[list[Group]]:
    """Pack whole groups into batches, longest first, under both bounds. A group that alone
    exceeds `max_batch_tokens` (one huge item) still runs, alone."""
    batches: list[list[Group]] = []
    current: list[Group] = []
    for g in sorted(groups, key=lambda g: -max(len(j.ids) for j in g.jobs)):
        candidate = [*current, g]
        rows = sum(len(x.jobs) for x in candidate)
        if current and (rows > batch_size or batch_kv_tokens(candidate) > max_batch_tokens):
            batches.append(current)
            candidate = [g]
        current = candidate
    if current:
        batches.append(current)
    return batches
