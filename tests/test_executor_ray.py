"""The Ray Data executor on one local Ray cluster (127.0.0.1, 2 CPUs) started once per test session
(tests/test_executor_synth.py uses the same fixture).

Worker factories are top-level classes of this module; the cluster's workers import it because the
fixture puts tests/ on their PYTHONPATH. Connection and installation errors run in subprocesses,
where no cluster is connected yet; so does the `ray start --head` recipe of docs/scale-out.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollux.executor import ExecutorError, ExecutorOptions, Row, map_batches
from pollux.executor.ray_data import start_local_cluster

pytestmark = pytest.mark.slow  # a Ray cluster start, actor pools, a `ray start` head: ~1.5 min on 2 cores

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the session. Other test files import this fixture, which makes it a
    second fixture definition: the cluster the first one started is reused, not started again."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield
        return
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        start_local_cluster(num_cpus=2)  # on loopback only
        try:
            yield
        finally:
            ray.shutdown()


def _rows(n: int) -> list[Row]:
    return [{"key": f"k{i:03d}", "x": i, "nested": {"list": [i, "два", None, {"deep": 1.5}], "empty": {}}}
            for i in range(n)]


class Square:
    """Deterministic: "y" = x², the nested value passed through untouched."""

    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            return [{"key": r["key"], "y": r["x"] ** 2, "nested": r["nested"]} for r in batch]

        return run


class SlowWithPid:
    """Writes its process id to `pid_dir` when built, then takes `delay` s per batch."""

    def __init__(self, pid_dir: Path, delay: float) -> None:
        self.pid_dir = pid_dir
        self.delay = delay

    def __call__(self):
        (self.pid_dir / str(os.getpid())).touch()

        def run(batch: list[Row]) -> list[Row]:
            time.sleep(self.delay)
            return [{"key": r["key"], "pid": os.getpid()} for r in batch]

        return run


class BrokenFactory:
    def __call__(self):
        raise FileNotFoundError("no model at /models/missing")


class AlwaysFails:
    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            if any(r["key"] == "k002" for r in batch):
                raise ValueError("the teacher's reply has no [RESULT]")
            return batch

        return run


class DiesOnKey:
    """The process exits whenever it runs the batch holding k002 — as a segfault or OOM would."""

    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            if any(r["key"] == "k002" for r in batch):
                os._exit(1)
            return batch

        return run


class FirstWorkerBroken:
    """In each actor process the first built worker always raises (a client opened badly); the next
    one works — so only a retry on a fresh worker can finish the run."""

    builds = 0  # per process

    def __call__(self):
        FirstWorkerBroken.builds += 1
        broken = FirstWorkerBroken.builds == 1

        def run(batch: list[Row]) -> list[Row]:
            if broken:
                raise ConnectionError("connection reset by peer")
            return [{"key": r["key"], "pid": os.getpid()} for r in batch]

        return run


class NotJsonResult:
    def __call__(self):
        return lambda batch: [{"key": r["key"], "when": object()} for r in batch]


def _collect(batches) -> list[Row]:
    return [row for batch in batches for row in batch]


def test_ray_and_local_give_the_same_results(ray_cluster):
    rows = _rows(40)
    local = _collect(map_batches(rows, Square(), ExecutorOptions(workers=2, batch_size=6)))
    on_ray = _collect(map_batches(rows, Square(), ExecutorOptions(ray="auto", workers=2, batch_size=6)))
    assert len(on_ray) == 40
    assert sorted(on_ray, key=lambda r: r["key"]) == sorted(local, key=lambda r: r["key"])
    assert on_ray[0]["nested"]["list"][1] == "два"


def test_a_killed_worker_process_loses_nothing(ray_cluster, tmp_path):
    factory = SlowWithPid(tmp_path, delay=0.3)
    options = ExecutorOptions(ray="auto", workers=2, batch_size=1, max_retries=3)
    results = map_batches(_rows(24), factory, options)
    out = list(next(results))
    victims = sorted(int(p.name) for p in tmp_path.iterdir())
    assert victims, "no worker wrote its pid"
    os.kill(victims[0], signal.SIGKILL)
    out += _collect(results)
    keys = {r["key"] for r in out}
    assert keys == {f"k{i:03d}" for i in range(24)}  # every key, none lost (a duplicate is allowed)
    assert len(list(tmp_path.iterdir())) > len(victims)  # a fresh worker took its place


def test_a_raising_worker_is_replaced_by_a_fresh_one(ray_cluster):
    out = _collect(map_batches(_rows(6), FirstWorkerBroken(), ExecutorOptions(ray="auto", batch_size=2, max_retries=1)))
    assert sorted(r["key"] for r in out) == [f"k{i:03d}" for i in range(6)]


def test_a_result_that_is_not_json_is_named(ray_cluster):
    with pytest.raises(ExecutorError, match="batch starting at key 'k000': a result row is not JSON"):
        _collect(map_batches(_rows(2), NotJsonResult(), ExecutorOptions(ray="auto", batch_size=2)))


def test_a_factory_that_raises_reaches_the_user(ray_cluster):
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="FileNotFoundError: no model at /models/missing"):
        _collect(map_batches(_rows(4), BrokenFactory(), ExecutorOptions(ray="auto", batch_size=2)))
    assert time.monotonic() - started < 60


def test_a_batch_that_keeps_failing_is_reported_with_its_key(ray_cluster):
    options = ExecutorOptions(ray="auto", batch_size=1, max_retries=2)
    with pytest.raises(ExecutorError) as err:
        _collect(map_batches(_rows(4), AlwaysFails(), options))
    assert "'k002' failed 3 times" in str(err.value)
    assert "ValueError: the teacher's reply has no [RESULT]" in str(err.value)


@pytest.mark.e2e
def test_a_batch_that_keeps_killing_its_worker_is_not_retried_forever(ray_cluster):
    started = time.monotonic()
    options = ExecutorOptions(ray="auto", batch_size=1, max_retries=1)
    with pytest.raises(ExecutorError, match="a worker process died running a batch"):
        _collect(map_batches(_rows(4), DiesOnKey(), options))
    assert time.monotonic() - started < 120


def test_a_row_that_is_not_json_is_named(ray_cluster):
    with pytest.raises(ExecutorError, match="row 'k1' cannot be sent to a Ray worker"):
        list(map_batches([{"key": "k0"}, {"key": "k1", "when": object()}], Square(), ExecutorOptions(ray="auto")))


def test_an_existing_connection_is_reused_and_another_address_warned_about(ray_cluster, caplog):
    import ray

    from pollux.executor.ray_data import connect

    here = ray.get_runtime_context().gcs_address
    with caplog.at_level("WARNING", logger="pollux.executor.ray_data"):
        assert connect(here) is ray and connect("auto") is ray
        assert caplog.records == []
        assert connect("10.0.0.1:6379") is ray
    assert f"already connected to the Ray cluster at {here}; running there, not at 10.0.0.1:6379" in caplog.text


def test_an_actor_no_node_can_hold_is_warned_about(ray_cluster, caplog):
    import ray

    from pollux.executor.ray_data import _warn_if_no_node_fits

    with caplog.at_level("WARNING", logger="pollux.executor.ray_data"):
        _warn_if_no_node_fits(ray, ExecutorOptions(ray="auto", cpus_per_worker=2))  # the cluster: 2 CPUs
        assert caplog.records == []
        _warn_if_no_node_fits(ray, ExecutorOptions(ray="auto", gpus_per_worker=1))  # …and no GPU
    assert "no node of the Ray cluster has 1.0 CPU(s) and 1 GPU(s)" in caplog.text


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_without_ray_installed_the_error_names_the_extra():
    done = _python(
        "import sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from pollux.executor import ExecutorError, ExecutorOptions, map_batches\n"
        "class F:\n"
        "    def __call__(self):\n"
        "        return lambda b: b\n"
        "try:\n"
        "    list(map_batches([{'key': 'a'}], F(), ExecutorOptions(ray='auto')))\n"
        "except ExecutorError as exc:\n"
        "    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'pollux[ray]'" in done.stdout


def test_a_bad_address_fails_fast():
    started = time.monotonic()
    done = _python(
        "from pollux.executor import ExecutorError, ExecutorOptions, map_batches\n"
        "class F:\n"
        "    def __call__(self):\n"
        "        return lambda b: b\n"
        "try:\n"
        "    list(map_batches([{'key': 'a'}], F(), ExecutorOptions(ray='127.0.0.1:9')))\n"
        "except ExecutorError as exc:\n"
        "    print(exc)\n",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot reach the Ray cluster at '127.0.0.1:9'" in done.stdout
    assert time.monotonic() - started < 30


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.mark.e2e
def test_a_cluster_started_with_ray_start_is_reached_by_its_address():
    """docs/scale-out.md's recipe on one machine: `ray start --head` on loopback, then a driver given
    127.0.0.1:PORT — without Ray's one-machine setting in the driver's environment (issue 23 #19:
    Ray then gave the driver the machine's address and the connection timed out after 30 s)."""
    port = _free_port()
    driver_env = {**os.environ, "RAY_AUTH_MODE": "token",
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    driver_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the session's cluster fixture sets it
    env = {**driver_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the head: bound to loopback
    ray_cli = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--block", f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code = (
            "from pollux.executor import ExecutorOptions, map_batches\n"
            "from test_executor_ray import Square, _rows\n"
            f"out = [r for b in map_batches(_rows(5), Square(), ExecutorOptions(ray='127.0.0.1:{port}')) for r in b]\n"
            "print(sorted(r['y'] for r in out))\n"
        )
        deadline = time.monotonic() + 60
        while True:  # the head takes a few seconds to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or head.poll() is not None:
                    head.kill()
                    raise AssertionError(f"ray start --head did not come up: {head.communicate()[1][-2000:]}") from None
                time.sleep(0.5)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                              env=driver_env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == "[0, 1, 4, 9, 16]"
    finally:
        head.terminate()  # `ray start --block` stops the node's processes on SIGTERM
        head.communicate(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_an_address_that_is_not_ray_fails_within_the_connect_timeout():
    with socket.create_server(("127.0.0.1", 0)) as not_ray:  # accepts TCP, never answers as Ray
        port = not_ray.getsockname()[1]
        started = time.monotonic()
        done = _python(
            "import pollux.executor.ray_data as ray_data\n"
            "ray_data.CONNECT_TIMEOUT_S = 3\n"
            "from pollux.executor import ExecutorError, ExecutorOptions, map_batches\n"
            "class F:\n"
            "    def __call__(self):\n"
            "        return lambda b: b\n"
            "try:\n"
            f"    list(map_batches([{{'key': 'a'}}], F(), ExecutorOptions(ray='127.0.0.1:{port}')))\n"
            "except ExecutorError as exc:\n"
            "    print(exc)\n",
            timeout=90,
        )
    assert done.returncode == 0, done.stderr
    assert f"no Ray cluster answered at '127.0.0.1:{port}' within 3 s" in done.stdout
    assert time.monotonic() - started < 30
