"""Two processes on this CPU (DDP over gloo, started by `accelerate launch` with the shipped
config) reproduce a one-process run with the same effective batch.

Tolerance: per-step training loss within rel 1e-5 and final weights within abs 1e-5. In practice
they agree to every printed digit: each process takes half of every step's rows, the step's loss
is normalised by the global token and row counts, and DDP's gradient average times the world
size is the sum a single process accumulates.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parent.parent


def _make_data():
    """The worked example's data generator (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "examples" / "train_arithmetic" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    return make_data


def _records(out: Path, kind: str) -> dict[int, dict]:
    lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def _free_port() -> str:
    """A free loopback port for the processes' rendezvous: the configs' fixed ports collide when
    two test sessions (or CI jobs) on one machine run these tests at the same time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.mark.slow
@pytest.mark.e2e
def test_two_process_run_matches_one_process(tmp_path: Path):
    from pollux.fixtures import build_tiny_judge

    data = _make_data().make_dataset(tmp_path / "data", train=32, valid=8, test=0, seed=2)
    base = build_tiny_judge(tmp_path / "base", hidden=64, layers=2, initializer_range=0.02, head_std=0.02)

    args = ["--model", str(base), "--train", str(data["train"]), "--valid", str(data["valid"]),
            "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "3", "--lr", "3e-3", "--eval-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pollux.train", *args, "--output", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = Path(sys.executable).with_name("accelerate")
    two = subprocess.run([str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu-ddp.yaml"),
                          "--num_processes", "2", "--main_process_port", _free_port(), "-m", "pollux.train", *args,
                          "--output", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    # A precondition, not the result: the world size and mode come from the launcher through
    # accelerate (WORLD_SIZE, the process group), not from pollux; a launcher that quietly ran one
    # process would make the comparison below pass trivially.
    first = {run: json.loads((tmp_path / run / "train_log.jsonl").read_text().splitlines()[0]) for run in ("one", "two")}
    assert (first["one"]["world_size"], first["two"]["world_size"]) == (1, 2)
    assert (first["one"]["distributed"], first["two"]["distributed"]) == ("NO", "MULTI_CPU")

    a, b = _records(tmp_path / "one", "train"), _records(tmp_path / "two", "train")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
        print(f"step {step}: 1 process {a[step]['loss']:.8f}, 2 processes {b[step]['loss']:.8f}")
    ea, eb = _records(tmp_path / "one", "eval")[3], _records(tmp_path / "two", "eval")[3]
    assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-5) and eb["n"] == ea["n"] == 8
    wa, wb = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_config_on_a_cpu_machine_says_it_runs_as_ddp(tmp_path: Path):
    """accelerate uses FSDP on GPUs only and silently runs the FSDP config as plain data
    parallelism on CPUs; pollux says so (stderr) and logs the mode it really got."""
    from pollux.fixtures import build_tiny_judge

    data = _make_data().make_dataset(tmp_path / "data", train=16, valid=0, test=0, seed=3)
    base = build_tiny_judge(tmp_path / "base", hidden=64, layers=2)
    accelerate = Path(sys.executable).with_name("accelerate")
    run = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"), "--num_processes", "2",
         "--main_process_port", _free_port(), "--mixed_precision", "no", "-m", "pollux.train", "--model", str(base), "--train", str(data["train"]),
         "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "1", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "asks for FSDP, but this run is MULTI_CPU" in run.stderr
    first = json.loads((tmp_path / "out" / "train_log.jsonl").read_text().splitlines()[0])
    assert (first["world_size"], first["distributed"]) == (2, "MULTI_CPU")
