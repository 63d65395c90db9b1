"""Shared test fixtures: tiny random judges built once per test session, offline.

HF_HOME points at a temporary folder so remote-code modules (cached by transformers when a
checkpoint is loaded with trust_remote_code) never leak between sessions or into ~/.cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="pollux-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process: test models are tiny, and tests often run a server or a CLI
# subprocess beside the test process; oversubscribed OpenMP threads spin-wait and can make a
# 1-second job take 10× longer on a 2-core machine. (Benchmarks set their own thread counts.)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_judge_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Qwen2WithRegressionHead checkpoint in the official `-r` layout (sharded)."""
    from pollux.fixtures import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny-judge-r"), regression=True)


@pytest.fixture(scope="session")
def tiny_generative_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random plain Qwen2ForCausalLM judge checkpoint."""
    from pollux.fixtures import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny-judge-gen"), regression=False, seed=1)


@pytest.fixture(scope="session")
def tiny_judge(tiny_judge_path: Path):
    """A loaded `pollux.Judge` over the tiny regression checkpoint (greedy, 24 new tokens)."""
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    return Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=24))
