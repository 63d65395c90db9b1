"""The local executor: threads with their own workers, streaming results, retries, clear errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from pollux.executor import ExecutorError, ExecutorOptions, Row, map_batches


def _rows(n: int) -> list[Row]:
    return [{"key": f"k{i:03d}", "x": i, "nested": {"a": [i, str(i)]}} for i in range(n)]


class Square:
    """A deterministic worker factory: each built worker squares "x" and records its thread."""

    def __init__(self) -> None:
        self.built: list[int] = []  # thread id of every build
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.built.append(threading.get_ident())

        def run(batch: list[Row]) -> list[Row]:
            return [{"key": r["key"], "y": r["x"] ** 2, "nested": r["nested"]} for r in batch]

        return run


def _collect(batches) -> list[Row]:
    return [row for batch in batches for row in batch]


def test_every_row_once_with_its_result():
    factory = Square()
    out = _collect(map_batches(iter(_rows(53)), factory, ExecutorOptions(workers=3, batch_size=5)))
    assert sorted(r["key"] for r in out) == [f"k{i:03d}" for i in range(53)]
    assert all(r["y"] == int(r["key"][1:]) ** 2 for r in out)
    assert out[0]["nested"] == {"a": [int(out[0]["key"][1:]), str(int(out[0]["key"][1:]))]}
    # one worker per thread, built once each (never per batch)
    assert len(factory.built) == len(set(factory.built)) <= 3


def test_batches_have_the_configured_size():
    sizes = sorted(len(b) for b in map_batches(_rows(23), Square(), ExecutorOptions(batch_size=10)))
    assert sizes == [3, 10, 10]


class Rendezvous:
    """Each worker waits until `parties` batches are running at once (fails if they never are)."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)

    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            self.barrier.wait()
            return batch

        return run


def test_workers_run_concurrently():
    out = _collect(map_batches(_rows(4), Rendezvous(4), ExecutorOptions(workers=4, batch_size=1)))
    assert len(out) == 4


class SlowFirst:
    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            if batch[0]["key"] == "k000":
                time.sleep(0.5)
            return batch

        return run


def test_results_are_yielded_as_they_complete():
    order = [b[0]["key"] for b in map_batches(_rows(2), SlowFirst(), ExecutorOptions(workers=2, batch_size=1))]
    assert order == ["k001", "k000"]


class FailOnce:
    """Each batch fails the first time it is seen; counts builds to show a retry gets a fresh worker."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.builds = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.builds += 1

        def run(batch: list[Row]) -> list[Row]:
            with self.lock:
                self.seen[batch[0]["key"]] += 1
                first_time = self.seen[batch[0]["key"]] == 1
            if first_time:
                raise ConnectionError("endpoint went away")
            return batch

        return run


def test_a_failing_batch_is_retried_on_a_fresh_worker():
    factory = FailOnce()
    out = _collect(map_batches(_rows(6), factory, ExecutorOptions(workers=1, batch_size=2, max_retries=1)))
    assert sorted(r["key"] for r in out) == [f"k{i:03d}" for i in range(6)]
    assert set(factory.seen.values()) == {2}
    assert factory.builds == 4  # the first worker, then a fresh one after each of the 3 failures


class AlwaysFails:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            self.calls += 1
            raise ValueError(f"cannot parse reply for {batch[0]['key']}")

        return run


def test_a_batch_that_keeps_failing_is_reported_after_max_retries():
    factory = AlwaysFails()
    with pytest.raises(ExecutorError) as err:
        _collect(map_batches(_rows(3), factory, ExecutorOptions(batch_size=3, max_retries=2)))
    message = str(err.value)
    assert "'k000'" in message
    assert "ValueError: cannot parse reply for k000" in message
    assert "3 times" in message
    assert factory.calls == 3


class BrokenFactory:
    def __call__(self):
        raise FileNotFoundError("no model at /models/missing")


def test_a_factory_that_raises_is_a_clear_error():
    with pytest.raises(ExecutorError, match="building a worker failed: FileNotFoundError: no model at /models/missing"):
        _collect(map_batches(_rows(3), BrokenFactory(), ExecutorOptions(workers=2, batch_size=1)))


class Identity:
    def __call__(self):
        return lambda batch: batch


def test_input_is_read_lazily():
    pulled = 0

    def endless():
        nonlocal pulled
        i = 0
        while True:
            pulled += 1
            yield {"key": f"k{i}"}
            i += 1

    results = map_batches(endless(), Identity(), ExecutorOptions(workers=2, batch_size=4))
    first = next(results)
    results.close()
    assert len(first) == 4
    assert pulled <= (2 * 2 + 1) * 4 + 1


def test_empty_input_yields_nothing():
    assert list(map_batches([], Square(), ExecutorOptions(workers=2))) == []


@pytest.mark.parametrize("bad", [{"workers": 0}, {"batch_size": 0}, {"max_retries": -1}, {"ray": " "}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        ExecutorOptions(**bad)


def test_local_mode_never_imports_ray():
    code = (
        "import sys\n"
        "from pollux.executor import ExecutorOptions, map_batches\n"
        "class F:\n"
        "    def __call__(self):\n"
        "        return lambda b: b\n"
        "out = [r for b in map_batches([{'key': 'a'}], F(), ExecutorOptions()) for r in b]\n"
        "assert out == [{'key': 'a'}], out\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
