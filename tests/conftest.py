"""Shared test fixtures: tiny random judges built once per test session, offline.

Everything a session writes outside pytest's `tmp_path` goes into one scratch folder that is
removed when the session ends: XDG_CACHE_HOME (the web UI's search indexes), HF_HOME (remote-code modules that transformers caches when a
checkpoint is loaded with trust_remote_code — they must never leak between sessions or into
~/.cache) and TMPDIR for every subprocess a test starts (accelerate's torchelastic folders, Ray's
session folders, the model card snippet's caches). pytest's own `tmp_path` folders are kept only
for failed tests, of the last session (pyproject: tmp_path_retention_*).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="pollux-tests-"))
(_SCRATCH / "hf-home").mkdir()
(_SCRATCH / "tmp").mkdir()
(_SCRATCH / "cache").mkdir()
os.environ["HF_HOME"] = str(_SCRATCH / "hf-home")
# the web UI's full-text indexes (pollux.ui) and anything else that honours the XDG cache folder
os.environ["XDG_CACHE_HOME"] = str(_SCRATCH / "cache")
# Subprocesses only: this process has already fixed its temp dir (tempfile caches it), so pytest's
# basetemp, and the folders of failed tests it keeps, stay where pytest users look for them.
os.environ["TMPDIR"] = str(_SCRATCH / "tmp")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process: test models are tiny, and tests often run a server or a CLI
# subprocess beside the test process; oversubscribed OpenMP threads spin-wait and can make a
# 1-second job take 10× longer on a 2-core machine. (Benchmarks set their own thread counts.)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


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


@pytest.fixture(scope="session")
def scoring_judge_path(tiny_generative_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generative judge overfitted to write `[FEEDBACK] … [RESULT] n [END]` (a few seconds;
    `pollux.fixtures.build_scoring_judge`): for expected scores, which need a `[RESULT]`."""
    from pollux.fixtures import build_scoring_judge

    return build_scoring_judge(tiny_generative_path, tmp_path_factory.mktemp("scoring-judge"))


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random plain Qwen3ForCausalLM (the Pollux-4B-Judge family's architecture; in-process it
    runs on the `generate` fallback, as every non-Qwen2 judge does)."""
    from pollux.fixtures import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny-qwen3"), regression=False, family="qwen3", seed=2)


@pytest.fixture(scope="session")
def always_one_judge_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3 in the Pollux-4B style that thinks, then answers "1" to the side-by-side prompts
    of `pollux.fixtures.COMPARE_RECORDS` (~15 s of CPU to overfit: slow tests only)."""
    from pollux.fixtures import build_always_one_judge

    return build_always_one_judge(tmp_path_factory.mktemp("always-one"))
