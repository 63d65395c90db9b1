"""Qwen2 causal LM with a regression head — the POLLUX `-r` judge architecture.

This file is self-contained (it imports only torch and transformers) because it ships inside
checkpoints: their `config.json` maps `AutoModelForCausalLM` to
`qwen2_regression.Qwen2WithRegressionHead`, so the model card's
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` loads it without pollux.

The regression head is `nn.Linear(hidden_size, 1)` applied to the final (post-norm) hidden state
of the last token of each sequence. With an attention mask the last token is the last position
whose mask is 1, so left- and right-padded batches both read the right place.

Loss, when labels are given: `lm_loss` (cross-entropy on the labels that are not -100, shifted as
usual) plus `regr_weight * regr_loss` (MSE between `regr_output` and `regr_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.x calls the KV cache field `cache`, 4.x `past_key_values`: inherit whichever
# the installed version has.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class RegressionCausalLMOutput(CausalLMOutputWithPast):
    lm_loss: torch.Tensor | None = None
    regr_loss: torch.Tensor | None = None
    regr_output: torch.Tensor | None = None


def last_token_index(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Index (within the current `length` positions) of each row's last real token.

    Works for left and right padding; the mask may also cover cached positions before them.
    """
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    mask = attention_mask[:, -length:].to(device)
    return (length - 1) - mask.flip(-1).int().argmax(dim=-1)


class Qwen2WithRegressionHead(Qwen2ForCausalLM):
    config_class = Qwen2Config

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.regression_head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        regr_labels: torch.Tensor | None = None,
        regr_weight: float = 1.0,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> RegressionCausalLMOutput:
        # Everything else (position ids, the KV cache — `past_key_values` in transformers 4.x,
        # `cache` in 5.x —, inputs_embeds, use_cache, ...) goes to the base model unchanged, so
        # this file works across transformers versions.
        kwargs.pop("return_dict", None)
        if input_ids is not None and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)  # the model card passes one unbatched sequence
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state  # post-norm
        batch, length = hidden.shape[:2]
        last = last_token_index(attention_mask, batch, length, hidden.device)
        last_hidden = hidden[torch.arange(batch, device=hidden.device), last]
        regr_output = self.regression_head(last_hidden).squeeze(-1)

        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])

        loss = lm_loss = regr_loss = None
        if labels is not None:
            if logits.shape[1] != length:
                raise ValueError("labels need logits for every position (logits_to_keep=0)")
            shift_logits = logits[:, :-1, :].float()
            lm_loss = nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(shift_logits.device),
                ignore_index=-100,
            )
            loss = lm_loss
        if regr_labels is not None:
            regr_loss = nn.functional.mse_loss(regr_output.float(), regr_labels.to(regr_output.device).float())
            loss = regr_weight * regr_loss if loss is None else loss + regr_weight * regr_loss

        return RegressionCausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            regr_loss=regr_loss,
            logits=logits,
            regr_output=regr_output,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD, None)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
