"""`pollux evaluate` on the executor (issue 14): the same verdicts locally, on worker threads and on
a Ray cluster; a killed Ray worker or a SIGKILLed driver loses nothing and writes nothing twice; a
bad cluster address, a missing Ray or a judge that cannot load on a worker are clear errors that
leave the run store as it was; vLLM parallelism options reach the engine.

The Ray tests share the session's one local cluster (bound to 127.0.0.1, 2 CPUs) with
tests/test_executor_ray.py; each worker here loads the tiny random judge."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from pollux.evaluate import EvaluateError, JudgeLoader, Progress, evaluate
from pollux.executor import ExecutorOptions
from pollux.executor.judging import JudgeFactory
from test_evaluate_kill import count, pollux_cmd, start, wait_until, write_input
from test_executor_ray import ray_cluster  # noqa: F401 — the session's one Ray cluster

OPTIONS = {"dtype": "float32", "device": "cpu", "max_new_tokens": 8, "batch_size": 4, "threads": 1}
CLI_OPTIONS = ["--dtype", "float32", "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "4", "--no-progress"]
VERDICTS = "SELECT item_key, rationale, raw_text, score, head_score, text_score, valid, error FROM verdicts ORDER BY item_key"


def loader(judge_path: Path, factory: Any = None) -> JudgeLoader:
    """What `pollux evaluate` builds: the request the run remembers, and a picklable factory."""
    return JudgeLoader({"judge": str(judge_path), "options": OPTIONS},
                       factory or JudgeFactory(str(judge_path), OPTIONS))


def rows(db: Path, sql: str = VERDICTS) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def assert_same_verdicts(a: list[tuple], b: list[tuple]) -> None:
    assert [r[0] for r in a] == [r[0] for r in b]  # the same judgements
    for x, y in zip(a, b, strict=True):
        assert x[1:3] == y[1:3], x[0]  # identical rationale and raw text
        for u, v in zip(x[3:6], y[3:6], strict=True):
            assert (u is None and v is None) or abs(u - v) <= 1e-5, (x[0], u, v)
        assert x[6:] == y[6:]


def assert_exactly_once(db: Path, n: int) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_key) FROM verdicts").fetchone() == (n, n)
        assert conn.execute("SELECT COUNT(*) FROM verdicts WHERE error IS NOT NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == n
        missing = conn.execute("SELECT COUNT(*) FROM jobs j LEFT JOIN verdicts v ON v.item_key = j.item_key "
                               "AND v.run_id = j.run_id WHERE v.verdict_pk IS NULL").fetchone()[0]
        assert missing == 0


@pytest.fixture(scope="module")
def local_run(tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 answers × 5 criteria judged by the default in-process path: the reference."""
    folder = tmp_path_factory.mktemp("local-run")
    src, db = folder / "answers.jsonl", folder / "local.db"
    write_input(src, 8)
    summary = evaluate(src, db, loader(tiny_judge_path), chunk_size=10)
    assert summary.judged == 40 and summary.remaining == 0
    return src, db


def test_worker_threads_give_the_local_verdicts(local_run: tuple[Path, Path], tiny_judge_path: Path,
                                                tmp_path: Path) -> None:
    """The executor path without Ray (two worker threads, each with its own judge)."""
    src, reference = local_run
    db = tmp_path / "threads.db"
    summary = evaluate(src, db, loader(tiny_judge_path), chunk_size=10, executor=ExecutorOptions(workers=2))
    assert (summary.judged, summary.failed, summary.remaining, summary.new_run) == (40, 0, 0, True)
    assert_same_verdicts(rows(reference), rows(db))
    assert_exactly_once(db, 40)
    again = evaluate(src, db, loader(tiny_judge_path), executor=ExecutorOptions(workers=2))
    assert (again.already_done, again.judged) == (40, 0)


@pytest.mark.slow
def test_ray_gives_the_local_verdicts(ray_cluster: None, local_run: tuple[Path, Path],  # noqa: F811
                                      tiny_judge_path: Path, tmp_path: Path) -> None:
    src, reference = local_run
    db = tmp_path / "ray.db"
    summary = evaluate(src, db, loader(tiny_judge_path), chunk_size=10,
                       executor=ExecutorOptions(ray="auto", workers=2))
    assert (summary.judged, summary.failed, summary.remaining) == (40, 0, 0)
    assert_same_verdicts(rows(reference), rows(db))
    assert_exactly_once(db, 40)
    # the same records and jobs as the local run
    records = "SELECT source, record_id, model_id, answer_key FROM records ORDER BY 1, 2, 3"
    jobs = "SELECT item_key, criteria_name, position FROM jobs ORDER BY 1"
    assert rows(db, records) == rows(reference, records) and rows(db, jobs) == rows(reference, jobs)


class GatedJudge:
    """A judge whose process, after its first batch, holds every further batch until the test opens
    the gate (a file) — so the test can kill a worker that is certainly in the middle of a batch."""

    def __init__(self, judge: Any, gate: Path, held: Path) -> None:
        self._judge, self._gate, self._held = judge, gate, held
        self._batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._judge, name)

    def judge_many(self, items: Any, **kwargs: Any) -> Any:
        self._batches += 1
        if self._batches > 1 and not self._gate.exists():
            (self._held / str(os.getpid())).touch()
            deadline = time.monotonic() + 300  # never hangs a broken test for ever
            while not self._gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return self._judge.judge_many(items, **kwargs)


class PidJudgeFactory(JudgeFactory):
    """A JudgeFactory that writes its worker's process id into `pid_dir/built` (so a test can count
    replacements) and loads a `GatedJudge`."""

    def __init__(self, spec: str, options: dict[str, Any], pid_dir: str) -> None:
        super().__init__(spec, options)
        object.__setattr__(self, "pid_dir", pid_dir)

    def __call__(self) -> Any:
        folder = Path(self.pid_dir)
        (folder / "built" / str(os.getpid())).touch()
        return GatedJudge(super().__call__(), folder / "gate", folder / "held")


class KillOnFirstVerdict(Progress):
    """When the first verdict reaches the driver: waits until a worker holds a batch (each worker
    judges one batch, then holds; 8 batches, 2 workers: one is certain to hold), SIGKILLs it, then
    opens the gate. The killed batch can only finish on a replacement process."""

    def __init__(self, pid_dir: Path) -> None:
        self.pid_dir, self.killed, self.seen = pid_dir, 0, 0

    def advance(self, n: int = 1) -> None:
        self.seen += n
        if not self.killed:
            held = self.pid_dir / "held"
            deadline = time.monotonic() + 120
            while not any(held.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.killed = int(sorted(held.iterdir())[0].name)
            os.kill(self.killed, signal.SIGKILL)
            (self.pid_dir / "gate").touch()
            self.seen_at_kill = self.seen


@pytest.mark.slow
def test_a_killed_ray_worker_loses_nothing_and_duplicates_nothing(
        ray_cluster: None, local_run: tuple[Path, Path], tiny_judge_path: Path, tmp_path: Path) -> None:  # noqa: F811
    """Issue 23 #20: the worker killed is one that holds a batch, so a replacement process must
    judge it — not, as before, whichever worker had the lowest pid, which under load could be idle
    while the other finished the run (then no replacement started and `>= 3` failed)."""
    src, reference = local_run
    pids, db = tmp_path / "pids", tmp_path / "ray.db"
    for folder in (pids / "built", pids / "held"):
        folder.mkdir(parents=True)
    killer = KillOnFirstVerdict(pids)
    factory = PidJudgeFactory(str(tiny_judge_path), OPTIONS, str(pids))
    summary = evaluate(src, db, loader(tiny_judge_path, factory), chunk_size=5,  # one answer per batch
                       executor=ExecutorOptions(ray="auto", workers=2), progress=killer)
    built = {p.name for p in (pids / "built").iterdir()}
    assert killer.killed and killer.seen_at_kill < 40  # killed mid-run
    assert str(killer.killed) in built and len(built) >= 3  # replaced
    assert (summary.judged, summary.failed, summary.remaining) == (40, 0, 0)
    assert_exactly_once(db, 40)
    assert_same_verdicts(rows(reference), rows(db))


@pytest.mark.slow
def test_a_sigkilled_driver_resumes_on_ray_judging_only_what_is_missing(
        ray_cluster: None, tiny_judge_path: Path, tmp_path: Path) -> None:  # noqa: F811
    import ray

    src, db = tmp_path / "answers.jsonl", tmp_path / "run.db"
    write_input(src, 8)
    address = ray.get_runtime_context().gcs_address
    args = [*pollux_cmd(), "evaluate", str(src), "--judge", str(tiny_judge_path), "--db", str(db), *CLI_OPTIONS,
            "--chunk-size", "5", "--ray", address, "--workers", "1"]
    proc = start(args)
    wait_until(proc, db, "SELECT COUNT(*) FROM verdicts", 5, timeout=150)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {proc.communicate()[1][-2000:]}"
    killed_at = count(db, "SELECT COUNT(*) FROM verdicts")
    assert 5 <= killed_at < 40

    final = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(final.stdout)
    assert (summary["already_done"], summary["judged"], summary["remaining"]) == (killed_at, 40 - killed_at, 0)
    assert summary["new_run"] is False
    assert_exactly_once(db, 40)


def _map_workers() -> set[int]:
    """Process ids of Ray Data's actor processes on this machine (Ray titles them `ray::MapWorker(…)`)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                pids.add(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.mark.slow
def test_stdout_is_only_the_json_summary_when_a_ray_worker_dies(ray_cluster: None, tiny_judge_path: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    """Issue 23 #19: Ray's driver printed its notices about a dead worker ("(raylet) Task MapWorker(…)
    .submit failed. There are 3 retries remaining…") to stdout, around the summary, so
    `pollux evaluate … --ray … > summary.json` was not JSON. A real CLI process; its workers are
    SIGKILLed mid-run."""
    import ray

    src, db = tmp_path / "answers.jsonl", tmp_path / "run.db"
    write_input(src, 8)
    before = _map_workers()  # idle actors of earlier runs in this session are left alone
    proc = start([*pollux_cmd(), "evaluate", str(src), "--judge", str(tiny_judge_path), "--db", str(db), *CLI_OPTIONS,
                  "--chunk-size", "5", "--ray", ray.get_runtime_context().gcs_address, "--workers", "2"])
    wait_until(proc, db, "SELECT COUNT(*) FROM verdicts", 1, timeout=150)
    ours = _map_workers() - before
    assert proc.poll() is None and ours, "the run ended (or had no worker) before a worker could be killed"
    for pid in ours:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)  # all of stdout is the one JSON document
    assert (summary["judged"], summary["failed"], summary["remaining"]) == (40, 0, 0)
    assert_exactly_once(db, 40)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bad_address_or_no_ray_stops_before_anything_is_written(local_run: tuple[Path, Path],
                                                                  tiny_judge_path: Path, tmp_path: Path) -> None:
    """Real CLI processes (this one may already be connected to the tests' cluster)."""
    src, reference = local_run
    db = tmp_path / "run.db"
    db.write_bytes(reference.read_bytes())
    extra = tmp_path / "more.jsonl"  # something left to judge, so only the executor can stop the run
    write_input(extra, 1)
    before = _digest(db)
    base = ["evaluate", str(src), str(extra), "--judge", str(tiny_judge_path), "--db", str(db), *CLI_OPTIONS]

    bad = subprocess.run([*pollux_cmd(), *base, "--ray", f"127.0.0.1:{_free_port()}"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "cannot reach the Ray cluster at '127.0.0.1:" in bad.stderr and bad.stdout == ""
    assert _digest(db) == before

    no_ray = ("import sys; sys.modules['ray'] = None; from pollux.cli import main; sys.argv = ['pollux', *sys.argv[1:]]; "
              "main()")
    missing = subprocess.run([sys.executable, "-c", no_ray, *base, "--ray", "auto"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert "Ray is not installed; the --ray mode needs the `ray` extra" in missing.stderr
    assert _digest(db) == before


@pytest.mark.slow
def test_a_judge_that_cannot_load_on_a_worker_is_a_clear_error(ray_cluster: None, local_run: tuple[Path, Path],  # noqa: F811
                                                               tmp_path: Path) -> None:
    src, _ = local_run
    db = tmp_path / "run.db"
    missing = tmp_path / "no-such-judge"
    broken = JudgeLoader({"judge": str(missing)}, JudgeFactory(str(missing), OPTIONS))
    with pytest.raises(EvaluateError, match=r"building a worker failed: .*no-such-judge"):
        evaluate(src, db, broken, executor=ExecutorOptions(ray="auto", workers=1, max_retries=0))
    assert rows(db, "SELECT COUNT(*) FROM verdicts") == [(0,)] and rows(db, "SELECT COUNT(*) FROM runs") == [(0,)]


def test_a_loaded_judge_cannot_go_to_workers(local_run: tuple[Path, Path], tiny_judge, tmp_path: Path) -> None:
    with pytest.raises(EvaluateError, match="needs a JudgeLoader"):
        evaluate(local_run[0], tmp_path / "run.db", tiny_judge, executor=ExecutorOptions(workers=2))
    assert not (tmp_path / "run.db").exists()


def test_vllm_parallelism_options_reach_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vLLM cannot run here: the options are validated by the registry and arrive at
    `VLLMEngine.from_pretrained` (which is replaced by a recorder: vLLM itself is not installed)."""
    from pollux.cli import _options as opt
    from pollux.engine.vllm_engine import VLLMEngine

    seen: dict[str, Any] = {}

    def record(path: Any, **options: Any) -> Any:
        seen.update(options, path=str(path))
        raise RuntimeError("recorded")

    monkeypatch.setattr(VLLMEngine, "from_pretrained", staticmethod(record))
    given = opt.engine_options(tensor_parallel_size=2, gpu_memory_utilization=0.7, max_model_len=4096)
    executor = opt.executor_options(ray="auto", workers=3, cpus_per_worker=None, gpus_per_worker=None,
                                    tensor_parallel_size=2)
    assert (executor.workers, executor.gpus_per_worker) == (3, 2.0)  # 3 replicas × 2 GPUs each
    with pytest.raises(RuntimeError, match="recorded"):
        JudgeFactory(f"vllm:{tmp_path}", opt.check_options(f"vllm:{tmp_path}", given))()
    assert (seen["tensor_parallel_size"], seen["gpu_memory_utilization"], seen["max_model_len"]) == (2, 0.7, 4096)
    with pytest.raises(typer.Exit) as stop:
        opt.check_options(str(tmp_path), {"tensor_parallel_size": 2})  # not an option of local judges
    assert stop.value.exit_code == 2


@pytest.mark.parametrize("where", [
    pytest.param(["--workers", "2"], id="threads"),
    pytest.param(["--ray", "auto", "--workers", "2"], id="ray", marks=pytest.mark.slow),
])
def test_meta_eval_on_the_executor_gives_the_in_process_scores(request: pytest.FixtureRequest, where: list[str],
                                                               tiny_judge_path: Path, tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from pollux.cli import app
    from test_metaeval_io import pollux_rows

    if "--ray" in where:
        request.getfixturevalue("ray_cluster")
    experts = tmp_path / "experts.jsonl"
    pd.DataFrame(pollux_rows(2, models=("a", "b"))[:12]).to_json(experts, orient="records", lines=True,
                                                                  force_ascii=False)
    base = ["meta-eval", str(experts), "--judge", str(tiny_judge_path), "--judge-name", "tiny", "--split", "all",
            "--bootstrap", "0", "--format", "json", "--out-of-scale", "clip", *CLI_OPTIONS[:-1]]
    runner = CliRunner()
    results = {}
    for name, extra in (("in-process", []), ("executor", where)):
        saved = tmp_path / f"{name}.jsonl"
        res = runner.invoke(app, [*base, "--save-scores", str(saved), *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        results[name] = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    local, executor = results["in-process"], results["executor"]
    assert [r["key"] for r in local] == [r["key"] for r in executor] and len(local) == 12
    for a, b in zip(local, executor, strict=True):
        assert a["judge"] == b["judge"] == "tiny" and a["error"] is None and b["error"] is None
        assert abs(a["head_score"] - b["head_score"]) <= 1e-5
