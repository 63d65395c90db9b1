"""Model classes. `qwen2_regression.py` is standalone: pollux copies it into every checkpoint
it saves, so `trust_remote_code=True` loading works where pollux is not installed."""

from pollux.modeling.qwen2_regression import Qwen2WithRegressionHead, RegressionCausalLMOutput

__all__ = ["Qwen2WithRegressionHead", "RegressionCausalLMOutput"]
