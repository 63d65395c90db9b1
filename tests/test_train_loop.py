"""The training loop on a tiny judge: it learns, writes judge folders, accumulates gradients
exactly, resumes exactly, trains LoRA and generative judges, and has a CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pollux.checkpoint import load_judge
from pollux.train import TrainConfig, TrainError, train

ROOT = Path(__file__).parent.parent


def _make_data():
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "examples" / "train_arithmetic" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_data().make_dataset(tmp_path_factory.mktemp("arith"), train=48, valid=12, test=3, seed=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pollux.fixtures import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("base"), hidden=64, layers=2, initializer_range=0.02,
                            head_std=0.02, seed=3)


def config(base: Path, data: dict[str, Path], out: Path, **over) -> TrainConfig:
    opts = dict(model=str(base), train_file=str(data["train"]), output_dir=str(out), lr=3e-3, batch_size=8,
                micro_batch_size=4, max_steps=4, warmup_steps=1, seed=5)
    return TrainConfig(**{**opts, **over})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def train_losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if h["kind"] == "train"}


def test_training_learns_and_writes_a_loadable_judge(base, data, tmp_path):
    result = train(config(base, data, tmp_path / "run", valid_file=str(data["valid"]), eval_every=2,
                          max_steps=6, eval_batch_size=5))
    evals = [h for h in result.history if h["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.5, evals  # it learns (≈12.6 → 11.3 here)
    assert evals[-1]["n"] == 12 and evals[-1]["mae"] is not None
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert log[0]["kind"] == "data" and log[0]["train"]["kept"] == 48

    loaded = load_judge(result.final_dir, dtype="float32", device="cpu")
    assert loaded.kind == "regression"
    cfg = json.loads((Path(result.final_dir) / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2WithRegressionHead"] and "auto_map" in cfg
    assert (Path(result.final_dir) / "qwen2_regression.py").is_file()
    trained, start = weights(Path(result.final_dir)), weights(base)
    assert not torch.equal(trained["regression_head.weight"], start["regression_head.weight"])


def test_accumulation_gives_the_loss_of_one_big_batch(base, data, tmp_path):
    """8 rows as 1×8 or 4×2 micro-batches: the same normalised loss and the same update."""
    runs = {mb: train(config(base, data, tmp_path / f"mb{mb}", micro_batch_size=mb, max_steps=2))
            for mb in (8, 2)}
    ref = train_losses(runs[8].history)
    for mb in (2,):
        got = train_losses(runs[mb].history)
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-5), (mb, step)
        w_ref, w = weights(Path(runs[8].final_dir)), weights(Path(runs[mb].final_dir))
        for name in ("regression_head.weight", "model.layers.0.self_attn.q_proj.weight"):
            torch.testing.assert_close(w[name], w_ref[name], rtol=1e-4, atol=1e-5)


def test_resume_gives_what_an_uninterrupted_run_gives(base, data, tmp_path):
    """4 steps in one go vs 2 steps, stop, resume, 2 more: the same losses (rel 1e-6) and weights
    (abs 1e-6) — in practice bit-identical: same data order, optimizer state and schedule. A
    resume with a different number of total steps is refused."""
    whole = train(config(base, data, tmp_path / "whole", max_steps=4))
    out = tmp_path / "split"
    first = train(config(base, data, out, max_steps=4, stop_after=2))
    assert first.stopped_at and Path(first.stopped_at).name == "checkpoint-2"
    state = json.loads((Path(first.stopped_at) / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["total_steps"] == 4
    # the checkpoint is itself a judge folder
    assert load_judge(first.stopped_at, dtype="float32", device="cpu").kind == "regression"
    second = train(config(base, data, out, max_steps=4, resume_from="latest"))
    a, b = train_losses(whole.history), train_losses(second.history)
    assert sorted(b) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert b[step] == pytest.approx(a[step], rel=1e-6), step
    wa, wb = weights(Path(whole.final_dir)), weights(Path(second.final_dir))
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-6)

    # the same checkpoint under a different schedule: refused, not silently resumed
    with pytest.raises(TrainError, match="total steps"):
        train(config(base, data, out, max_steps=5, resume_from="latest"))


@pytest.mark.slow
def test_lora_training_writes_a_merged_judge(base, data, tmp_path):
    result = train(config(base, data, tmp_path / "lora", lora_r=4, lora_alpha=8, max_steps=3, lr=1e-2))
    trained, start = weights(Path(result.final_dir)), weights(base)
    assert set(trained) == set(start)  # merged: no adapter tensors, the judge layout
    changed = [n for n in start if not torch.equal(trained[n], start[n])]
    assert "regression_head.weight" in changed  # trained in full (modules_to_save)
    assert "model.layers.0.self_attn.q_proj.weight" in changed  # LoRA delta merged in
    assert "model.embed_tokens.weight" not in changed  # frozen
    assert load_judge(result.final_dir, dtype="float32", device="cpu").kind == "regression"


@pytest.mark.slow
def test_generative_judge_training(data, tmp_path, tiny_generative_path):
    result = train(config(tiny_generative_path, data, tmp_path / "gen", max_steps=2, lr=1e-3))
    records = [h for h in result.history if h["kind"] == "train"]
    assert "regr_loss" not in records[-1] and records[-1]["loss"] == records[-1]["lm_loss"]
    assert load_judge(result.final_dir, dtype="float32", device="cpu").kind == "generative"


def test_cli_trains(base, data, tmp_path):
    cmd = [sys.executable, "-m", "pollux.cli", "train", "--model", str(base), "--train", str(data["train"]),
           "--output", str(tmp_path / "cli"), "--batch-size", "8", "--micro-batch-size", "8",
           "--max-steps", "1", "--lr", "1e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 1 and Path(summary["final_dir"], "config.json").is_file()
    assert '"kind": "train"' in proc.stderr  # progress on stderr


def test_cli_names_a_bad_training_row(base, data, tmp_path):
    """In-process (typer's runner; the verb's real code): the file is read before any weights."""
    from typer.testing import CliRunner

    from pollux.cli import app

    bad = tmp_path / "bad.jsonl"
    lines = data["train"].read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([lines[0], '{"instruction": "x"', lines[1]]) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--model", str(base), "--train", str(bad), "--output",
                                      str(tmp_path / "cli"), "--batch-size", "8", "--max-steps", "1"])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert "bad.jsonl:2: broken JSON" in result.stderr
