"""Checkpoint layouts: the official sharded `-r` layout with its head, clear errors without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pollux.checkpoint import CheckpointError, load_judge, save_judge


def test_fixture_has_the_official_sharded_layout(tiny_judge_path: Path):
    cfg = json.loads((tiny_judge_path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert cfg["architectures"] == ["Qwen2WithRegressionHead"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "qwen2_regression.Qwen2WithRegressionHead"
    assert (tiny_judge_path / "qwen2_regression.py").is_file()
    index = json.loads((tiny_judge_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2, "fixture should be sharded"
    assert {"regression_head.weight", "regression_head.bias", "lm_head.weight"} <= set(index["weight_map"])


def test_sharded_checkpoint_loads_with_its_head(tiny_judge_path: Path):
    loaded = load_judge(tiny_judge_path, dtype="float32", device="cpu")
    assert loaded.kind == "regression"
    index = json.loads((tiny_judge_path / "model.safetensors.index.json").read_text())
    shard = load_file(tiny_judge_path / index["weight_map"]["regression_head.weight"])
    assert torch.equal(loaded.model.regression_head.weight, shard["regression_head.weight"])
    out = loaded.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.regr_output.shape == (1,) and out.logits.shape == (1, 3, 151_936)


def _drop_head(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    index_file = dst / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard_name = index["weight_map"].pop("regression_head.weight")
    index["weight_map"].pop("regression_head.bias")
    tensors = load_file(dst / shard_name)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("regression_head")}
    save_file(tensors, dst / shard_name, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))


def test_missing_head_is_a_clear_error(tiny_judge_path: Path, tmp_path: Path):
    _drop_head(tiny_judge_path, tmp_path / "no-head")
    with pytest.raises(CheckpointError, match=r"regression_head\.weight.*regression head is missing"):
        load_judge(tmp_path / "no-head", device="cpu")


def test_missing_head_in_an_index_that_still_lists_it(tiny_judge_path: Path, tmp_path: Path):
    """The index lies (lists the head) but the shard lacks it: still an error, not a warning."""
    dst = tmp_path / "lying-index"
    _drop_head(tiny_judge_path, dst)
    index_file = dst / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["regression_head.weight"] = index["weight_map"]["lm_head.weight"]
    index["weight_map"]["regression_head.bias"] = index["weight_map"]["lm_head.weight"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(Exception, match="regression_head"):
        load_judge(dst, device="cpu")


def test_not_a_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_judge(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="never downloads"):
        load_judge("ai-forever/pollux-judge-7b-r", device="cpu")


def test_generative_checkpoint_loads(tiny_generative_path: Path):
    loaded = load_judge(tiny_generative_path, device="cpu")
    assert loaded.kind == "generative" and not hasattr(loaded.model, "regression_head")


def test_plain_auto_loading_would_drop_the_head(tiny_judge_path: Path):
    """Why pollux loads its class directly: without trust_remote_code the head silently vanishes."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_judge_path)
    assert not hasattr(plain, "regression_head")


def test_saved_checkpoint_round_trips_with_remote_code(tiny_judge_path: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    loaded = load_judge(tiny_judge_path, dtype="float32", device="cpu")
    out = save_judge(loaded.model, loaded.tokenizer, tmp_path / "resaved", max_shard_size="30MB")
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(remote).__name__ == "Qwen2WithRegressionHead"
    assert type(remote).__module__ != "pollux.modeling.qwen2_regression"  # the copy inside the checkpoint
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(remote(input_ids=ids).regr_output, loaded.model(input_ids=ids).regr_output)


def test_judges_loaded_by_threads_at_once_all_have_their_head(tiny_judge_path: Path):
    """`--workers N` on threads loads N judges at once. transformers 4.x keeps loading state in
    globals, and concurrent loads left a head on the meta device (a spurious CheckpointError)."""
    from concurrent.futures import ThreadPoolExecutor

    reference = load_judge(tiny_judge_path).model.regression_head.weight
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            loaded = list(pool.map(lambda _: load_judge(tiny_judge_path), range(4)))
            for judge in loaded:
                head = judge.model.regression_head.weight
                assert not head.is_meta and torch.equal(head, reference)
