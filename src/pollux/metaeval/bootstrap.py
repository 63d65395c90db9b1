"""Bootstrap confidence intervals that resample answers, not rows.

The rows of one answer (its ~16 criteria) are scored by the same experts and the same judge
reading the same text, so they are not independent; resampling rows would make the intervals
too narrow. We resample answers (instruction, answer, evaluated LLM) with replacement, within
each evaluated LLM, and keep all rows of a drawn answer.

A resample is a matrix of counts `C[b, a]` — how often answer `a` was drawn in resample `b` —
and every metric is computed from it without materialising the resampled rows:

* mean-type metrics (MAE, agreement, VC): per-answer sums, then `C @ sums / C @ counts`;
* Pearson: per-answer sums of x, y, x², y², xy, then the same product;
* Spearman: ranks in a weighted sample. With rows sorted by value once, a value's average rank
  is (weight of smaller values) + (weight of its tie group + 1) / 2, i.e. a cumulative sum over
  tie groups — no sorting per resample. Average ranks always sum to N(N+1)/2 and their squares
  to Σk² − Σ(t³ − t)/12, so only the cross term Σ w·rx·ry needs the rows; the experts' scores
  have few distinct values, so their side is a small one-hot matrix product (and when both
  sides have few values, everything is a contingency table per resample).

Kendall's tau has no such shortcut; its intervals are computed only on request, one scipy call
per resample.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

# Elements (resamples × rows) per block: ~1 MB of float64, so the passes over a block's rows
# (gather, cumulative sum, product, group sums) run in the CPU cache.
CHUNK_ELEMENTS = 131_072

T = TypeVar("T")
R = TypeVar("R")


def resample_counts(n_answers: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """C[b, a]: how often answer a is drawn in resample b (n_answers draws with replacement)."""
    draws = rng.integers(0, n_answers, size=(n_resamples, n_answers))
    # Each resample's counts overwrite its own (already counted) draws: no second matrix of this
    # size is allocated. Fresh memory is what costs most here (~46 MB per LLM on POLLUX).
    counts = draws.view(np.float64)
    for b in range(n_resamples):
        counts[b] = np.bincount(draws[b], minlength=n_answers)
    return counts


@dataclass(frozen=True)
class _Ties:
    """A variable sorted once: its order, where its tie groups start, each sorted row's group."""

    order: np.ndarray
    starts: np.ndarray
    group: np.ndarray  # group id of each sorted position

    @classmethod
    def of(cls, v: np.ndarray) -> _Ties:
        order = np.argsort(v, kind="stable")
        s = v[order]
        new = np.empty(s.size, dtype=bool)
        new[:1] = True
        new[1:] = s[1:] != s[:-1]
        return cls(order=order, starts=np.flatnonzero(new), group=np.cumsum(new) - 1)

    @property
    def n_groups(self) -> int:
        return int(self.starts.size)


def _group_ranks(wg: np.ndarray) -> np.ndarray:
    """Average ranks of tie groups with weights wg (b, G), in ascending value order."""
    return np.cumsum(wg, axis=1) - wg / 2 + 0.5


def _weighted_corr(n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray,
                   sxy: np.ndarray) -> np.ndarray:
    """Pearson's r from weighted sums (n = Σw, sx = Σw·x, sxx = Σw·x², sxy = Σw·x·y)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # n = 0 or no variance: NaN, handled below
        cov = sxy - sx * sy / n
        vx = sxx - sx * sx / n
        vy = syy - sy * sy / n
        r = cov / np.sqrt(vx * vy)
    # A constant resample has zero variance up to rounding: undefined, not ±huge.
    r[(vx <= 1e-9 * np.abs(sxx)) | (vy <= 1e-9 * np.abs(syy))] = np.nan
    return np.clip(r, -1.0, 1.0)


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """BLAS on one thread while resampling: the products here are many and small, and OpenBLAS
    threads that spin between them cost more CPU than they save (a third more CPU time on
    POLLUX); the parallelism is our own thread pool over blocks of resamples. Needs
    threadpoolctl; without it, BLAS keeps its own setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _chunks(n_resamples: int, n_rows: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_rows, 1))
    for lo in range(0, n_resamples, step):
        yield slice(lo, min(lo + step, n_resamples))


def _workers(n_tasks: int) -> int:
    """Threads for `n_tasks`: one inside a pool thread already (the outer level keeps the cores
    busy, and a pool thread waiting on its own pool could deadlock), else up to 4 or the CPUs."""
    if threading.current_thread().name.startswith(_THREAD_PREFIX):
        return 1
    return min(n_tasks, os.cpu_count() or 1, 4)


def map_parallel(work: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
    """`work` over `tasks` on a few threads (numpy releases the GIL), results in task order."""
    workers = _workers(len(tasks))
    if workers <= 1:
        return map(work, tasks)
    return _pool(workers).map(work, tasks)


def _parallel(work: Callable[[slice], None], n_resamples: int, n_rows: int) -> None:
    """Run `work` over chunks of resamples on a few threads."""
    list(map_parallel(work, list(_chunks(n_resamples, n_rows))))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_THREAD_PREFIX = "pollux-bootstrap"


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool kept for the process: a meta-evaluation calls `_parallel` once per judge, LLM
    and criterion group (~50 times on POLLUX), and starting fresh threads each time cost more than
    some of the chunks themselves."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_THREAD_PREFIX)
    return _POOLS[workers]


def _per_answer(answer: np.ndarray, group: np.ndarray, n_answers: int, n_groups: int) -> np.ndarray:
    """N[a, g]: how many rows of answer a fall in group g."""
    flat = answer.astype(np.int64) * n_groups + group
    return np.bincount(flat, minlength=n_answers * n_groups).reshape(n_answers, n_groups).astype(float)


def _sum_sq_ranks(n: np.ndarray, tie_term: np.ndarray) -> np.ndarray:
    """Σ rank² over N observations with average ranks: Σk² − Σ_ties (t³ − t) / 12."""
    return n * (n + 1) * (2 * n + 1) / 6 - tie_term / 12


def spearman_resampled(x: np.ndarray, y: np.ndarray, answer: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman's rho in each resample (ties → average ranks): shape (n_resamples,).

    Uses that average ranks sum to N(N+1)/2 and their squares to Σk² − Σ(t³ − t)/12 whatever
    the ties, so only the cross term Σ w·rx·ry needs the rows. A drawn-k-times row is a tie of
    size k with itself.
    """
    tx, ty = _Ties.of(x), _Ties.of(y)
    if tx.n_groups < ty.n_groups:  # x: the side with more distinct values
        x, y, tx, ty = y, x, ty, tx
    a_count = counts.shape[1]
    gx_row = np.empty(x.size, dtype=np.int64)
    gx_row[tx.order] = tx.group
    gy_row = np.empty(y.size, dtype=np.int64)
    gy_row[ty.order] = ty.group
    if tx.n_groups * ty.n_groups <= 4096:  # few values on both sides: a contingency table per resample
        cells = _per_answer(answer, gx_row * ty.n_groups + gy_row, a_count, tx.n_groups * ty.n_groups)
        table = (counts @ cells).reshape(counts.shape[0], tx.n_groups, ty.n_groups)
        wgx, wgy = table.sum(axis=2), table.sum(axis=1)
        rgx, rgy = _group_ranks(wgx), _group_ranks(wgy)
        sxy = np.einsum("bi,bij,bj->b", rgx, table, rgy)
    elif ty.n_groups <= 256:  # many x values (e.g. a regression head), few expert values
        sxy, ties_x, wgy = _cross_few_y(tx, gy_row, ty.n_groups, answer, counts)
        wgx = None
    else:  # general case: ranks row by row
        sxy = np.empty(counts.shape[0])
        wgx = np.empty((counts.shape[0], tx.n_groups))
        wgy = np.empty((counts.shape[0], ty.n_groups))
        for sl in _chunks(counts.shape[0], x.size):
            w = counts[sl][:, answer]
            wgx[sl] = np.add.reduceat(w[:, tx.order], tx.starts, axis=1)
            wgy[sl] = np.add.reduceat(w[:, ty.order], ty.starts, axis=1)
            rx = _group_ranks(wgx[sl])[:, gx_row]
            ry = _group_ranks(wgy[sl])[:, gy_row]
            sxy[sl] = (w * rx * ry).sum(axis=1)
    n = counts @ np.bincount(answer, minlength=a_count).astype(float)
    if wgx is not None:
        ties_x = (wgx**3 - wgx).sum(axis=1)
    ties_y = (wgy**3 - wgy).sum(axis=1)
    s = n * (n + 1) / 2
    return _weighted_corr(n, s, s, _sum_sq_ranks(n, ties_x), _sum_sq_ranks(n, ties_y), sxy)


def _cross_few_y(tx: _Ties, gy_row: np.ndarray, n_gy: int, answer: np.ndarray,
                 counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman's cross term Σ w·rx·ry, Σ(t³ − t) over x's ties and the y groups' weights, for
    an x with many distinct values and a y with few (`gy_row`: each row's y group).

    A row alone in its x value has rank rx_i = cum_i − (w_i − 1)/2 (cum inclusive, x order). Per
    block of resamples the rows are touched by a gather, a cumulative sum, a product and one
    product with a (rows × y groups) one-hot matrix (BLAS on one thread, `one_blas_thread`);
    Σ w(w − 1)/2 over a y group's untied rows depends on the answer only (a small product with
    the counts), and rows that tie in x (usually few) swap w·cum for w·(their group's rank).
    Everything is in float64: counts, running sums and their products are (half-)integers far
    below 2**53, so every sum is exact in any order (a float32 matrix product was off by ~3e-7
    in rho at POLLUX's size)."""
    n, a_count, b_count = tx.order.size, counts.shape[1], counts.shape[0]
    ans_sorted = answer[tx.order]
    gy_sorted = gy_row[tx.order]
    wgy = counts @ _per_answer(answer, gy_row, a_count, n_gy)
    size = np.diff(np.append(tx.starts, n))
    tied_groups = np.flatnonzero(size > 1)
    t_start, t_end = tx.starts[tied_groups], tx.starts[tied_groups] + size[tied_groups] - 1
    tied_rows = np.flatnonzero(size[tx.group] > 1)  # sorted positions
    tied_local = np.searchsorted(tied_groups, tx.group[tied_rows])
    single = np.bincount(ans_sorted[size[tx.group] == 1], minlength=a_count).astype(float)
    t = np.empty((b_count, n_gy))
    ties_x = np.empty(b_count)
    untied = size[tx.group] == 1
    onehot = np.zeros((n, n_gy))
    onehot[np.arange(n), gy_sorted] = 1.0
    # Σ over a y group's untied rows of w(w − 1)/2: it depends on the answer only
    tied_onehot = onehot[tied_rows]
    untied_pairs = _per_answer(ans_sorted[untied], gy_sorted[untied], a_count, n_gy) / 2

    def cross(sl: slice) -> None:
        c = counts[sl]
        t[sl] = (c - c * c) @ untied_pairs
        ties_x[sl] = ((c * c - 1) * c) @ single  # a row drawn k times: a tie of size k
        w = np.take(c, ans_sorted, axis=1)
        rank = np.cumsum(w, axis=1)
        if tied_rows.size:
            end = np.take(rank, t_end, axis=1)
            before = np.take(rank, t_start, axis=1) - np.take(w, t_start, axis=1)  # weight before the group
            wg = end - before
            ties_x[sl] += ((wg * wg - 1) * wg).sum(axis=1)
            group_rank = np.take((before + end + 1) / 2, tied_local, axis=1)
            w_t = np.take(w, tied_rows, axis=1)
            t[sl] += (w_t * (group_rank - np.take(rank, tied_rows, axis=1))) @ tied_onehot
        rank *= w
        t[sl] += rank @ onehot

    _parallel(cross, b_count, n)
    return (t * _group_ranks(wgy)).sum(axis=1), ties_x, wgy


def pearson_sums(x: np.ndarray, y: np.ndarray, answer: np.ndarray, n_answers: int) -> np.ndarray:
    """Per-answer sums of 1, x, y, x², y², xy (centred): Pearson's r of a resample is a function of
    their count-weighted totals (`pearson_from`)."""
    x = x - x.mean()
    y = y - y.mean()
    return np.stack([np.bincount(answer, weights=v, minlength=n_answers)
                     for v in (np.ones_like(x), x, y, x * x, y * y, x * y)], axis=1)


def pearson_from(totals: np.ndarray) -> np.ndarray:
    """Pearson's r per resample from `counts @ pearson_sums(...)`."""
    n, sx, sy, sxx, syy, sxy = totals.T
    return _weighted_corr(n, sx, sy, sxx, syy, sxy)


def pearson_resampled(x: np.ndarray, y: np.ndarray, answer: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson's r in each resample, from per-answer sums."""
    return pearson_from(counts @ pearson_sums(x, y, answer, counts.shape[1]))


def mean_sums(values: dict[str, np.ndarray], answer: np.ndarray, n_answers: int) -> np.ndarray:
    """Per-answer sum and count of each per-row array (NaNs left out): two columns per array."""
    columns = []
    for v in values.values():
        ok = ~np.isnan(v)
        columns.append(np.bincount(answer[ok], weights=v[ok], minlength=n_answers))
        columns.append(np.bincount(answer[ok], minlength=n_answers).astype(float))
    return np.stack(columns, axis=1)


def means_from(names: list[str], totals: np.ndarray) -> dict[str, np.ndarray]:
    """Each array's mean per resample from `counts @ mean_sums(...)`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: totals[:, 2 * k] / totals[:, 2 * k + 1] for k, name in enumerate(names)}


def means_resampled(values: dict[str, np.ndarray], answer: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The mean of each per-row array (NaNs left out) in each resample, all from one product."""
    return means_from(list(values), counts @ mean_sums(values, answer, counts.shape[1]))


def mean_resampled(values: np.ndarray, answer: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean of per-row `values` (NaNs left out) in each resample."""
    return means_resampled({"v": values}, answer, counts)["v"]


def kendall_resampled(x: np.ndarray, y: np.ndarray, answer: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Kendall's tau-b in each resample: one scipy call per resample (slow; opt-in)."""
    from scipy import stats

    out = np.empty(counts.shape[0])
    for b in range(counts.shape[0]):
        reps = counts[b, answer].astype(np.int64)
        xs, ys = np.repeat(x, reps), np.repeat(y, reps)
        if xs.size < 2 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
            out[b] = np.nan
        else:
            out[b] = stats.kendalltau(xs, ys, variant="b").statistic
    return out


def percentile_ci(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval over the defined (non-NaN) resamples; NaNs when none is defined."""
    ok = samples[~np.isnan(samples)]
    if ok.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return float(lo), float(hi)


def alpha_resampled(x: np.ndarray, y: np.ndarray, answer: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Ordinal Krippendorff's alpha per resample: each resample's coincidence matrix is the count
    matrix times a sparse (answer × coincidence cell) matrix, so no resampled rows are made. Costs
    about as much as Spearman: computed only on request (`--alpha-ci`)."""
    from scipy import sparse

    from pollux.metaeval.metrics import alpha_codes, alpha_from_pairs

    cells, n_levels = alpha_codes(x, y)
    used, cell = np.unique(cells, return_inverse=True)
    per_answer = sparse.csr_matrix((np.ones(cells.size), (answer, cell)), shape=(counts.shape[1], used.size))
    totals = np.asarray(per_answer.T @ counts.T).T  # (resamples, cells used)
    flat = np.zeros((counts.shape[0], n_levels * n_levels))
    flat[:, used] = totals
    pairs = flat.reshape(-1, n_levels, n_levels)
    return alpha_from_pairs(pairs + pairs.transpose(0, 2, 1))
