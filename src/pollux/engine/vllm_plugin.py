"""Teach vLLM the `-r` judges' architecture name, `Qwen2WithRegressionHead`.

A POLLUX `-r` checkpoint is a plain Qwen2 causal LM plus `regression_head.{weight,bias}`, and its
`config.json` names the architecture `Qwen2WithRegressionHead`. vLLM does not know that name, and
its Qwen2 weight loader raises on the unexpected `regression_head.*` tensors. We register a model
class under that name: vLLM's own `Qwen2ForCausalLM` whose weight loader skips the head. The head
itself is applied by pollux (in torch, from the checkpoint's safetensors) to the last-token hidden
state that vLLM's pooling runner returns — see `pollux.engine.vllm_engine`.

Why an entry point (`vllm.general_plugins` in pyproject.toml) and not just a call in our process:
vLLM builds the model inside engine-core / worker subprocesses, which load general plugins at
start-up but do not run our code. `register()` is also called directly before an engine starts, so
the registration holds in-process too (e.g. with `VLLM_ENABLE_V1_MULTIPROCESSING=0`). It is safe to
call many times, and it imports nothing heavy: the class is registered lazily as a
`module:Class` string and is only imported where vLLM builds the model.
"""

from __future__ import annotations

from collections.abc import Iterable

REGRESSION_ARCH = "Qwen2WithRegressionHead"  # == pollux.checkpoint.REGRESSION_ARCH (no torch import here)
HEAD_PREFIX = "regression_head."


def register() -> None:
    """vLLM general plugin: register `Qwen2WithRegressionHead` with vLLM's model registry."""
    from vllm import ModelRegistry

    if REGRESSION_ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(REGRESSION_ARCH, f"{__name__}:Qwen2WithRegressionHeadForVLLM")


def drop_head_weights(weights: Iterable[tuple[str, object]]) -> Iterable[tuple[str, object]]:
    """The checkpoint's tensors without `regression_head.*` (vLLM's model has no such module)."""
    return ((name, w) for name, w in weights if not name.startswith(HEAD_PREFIX))


def __getattr__(name: str):
    # The model class subclasses vLLM's Qwen2ForCausalLM, so it is built on first access (by
    # vLLM's lazy registry, in the process that constructs the model) — importing this module
    # stays cheap and works without vLLM.
    if name == "Qwen2WithRegressionHeadForVLLM":
        cls = _make_model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _make_model_class():
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    class Qwen2WithRegressionHeadForVLLM(Qwen2ForCausalLM):
        """vLLM's Qwen2 causal LM for `-r` checkpoints: the regression head's weights are skipped
        (pollux applies the head itself). Generation and the pooling runner (`convert="embed"`,
        LAST pooling) both build on this class."""

        def load_weights(self, weights):
            return super().load_weights(drop_head_weights(weights))

    return Qwen2WithRegressionHeadForVLLM
