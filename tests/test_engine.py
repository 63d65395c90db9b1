"""The in-process engine: parity with the model card's method, prefix sharing, bounds, errors."""

from __future__ import annotations

import pytest

from pollux.engine import SamplingParams
from pollux.engine.hf import TransformersEngine
from pollux.engine.reference import model_card_judge
from pollux.records import JudgeItem
from pollux.verdicts import make_verdict

RUBRIC_2 = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
RUBRIC_1 = "0 — требование не выполнено.\n\n1 — требование выполнено."

ANSWERS = [
    ("Сколько будет 7 × 8?", "56", "Семь умножить на восемь — 56."),
    ("Назови три столицы европейских государств и коротко опиши каждую из них одним предложением.", "",
     "Париж — столица Франции, город музеев. Берлин — столица Германии, известный своей историей. "
     "Рим — столица Италии, где сохранилось множество античных памятников."),
    ("Переведи на английский: «кошка спит».", "The cat is sleeping.", "A cat sleeps."),
]
CRITERIA = [("Правильность ответа", RUBRIC_2), ("Грамотность", RUBRIC_2), ("Отсутствие зацикливаний", RUBRIC_1)]


def mixed_items() -> list[JudgeItem]:
    """9 items (3 answers × 3 criteria) with prompts of different lengths."""
    return [JudgeItem(instruction=i, reference_answer=r, answer=a, criteria_name=c, rubrics=rb)
            for i, r, a in ANSWERS for c, rb in CRITERIA]


@pytest.fixture(scope="module")
def loaded(tiny_judge_path):
    from pollux.checkpoint import load_judge

    return load_judge(tiny_judge_path, dtype="float32", device="cpu")


def engine(loaded, **kw) -> TransformersEngine:
    sampling = kw.pop("sampling", SamplingParams(max_new_tokens=12))
    return TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="tiny", sampling=sampling, **kw)


def assert_parity(loaded, items, verdicts, sampling):
    for item, v in zip(items, verdicts, strict=True):
        ref = model_card_judge(loaded.model, loaded.tokenizer, item, max_new_tokens=sampling.max_new_tokens,
                               min_new_tokens=sampling.min_new_tokens)
        assert v.raw_text == ref["text"]
        assert v.completion_tokens == ref["completion_tokens"]
        assert abs(v.head_score - ref["score"]) <= 1e-4, (v.head_score, ref["score"])


def test_parity_with_the_model_card_on_a_mixed_length_batch(loaded):
    items = mixed_items()
    assert len({len(loaded.tokenizer(it.instruction + it.answer)["input_ids"]) for it in items}) == 3
    eng = engine(loaded)
    verdicts = eng.judge_many(items)
    assert eng.stats["batches"] == 1
    assert all(v.head_score is not None and v.finish_reason == "length" for v in verdicts)
    assert_parity(loaded, items, verdicts, eng.sampling)
    # identical items give identical verdicts wherever they sit in a batch
    again = eng.judge_many(list(reversed(items)))
    assert [v.head_score for v in again] == pytest.approx([v.head_score for v in reversed(verdicts)], abs=1e-5)


def test_parity_when_sequences_stop_at_different_steps(loaded):
    """Make two tokens the model really emits count as end-of-turn: rows then finish at
    different steps (the score is still read at each row's own last token)."""
    import torch

    items = mixed_items()
    eng = engine(loaded, sampling=SamplingParams(max_new_tokens=16))
    free = eng.judge_many(items)
    stops = set()
    for k in (0, 4):
        ids = loaded.tokenizer(free[k].raw_text, add_special_tokens=False)["input_ids"]
        stops.add(ids[min(len(ids) - 1, 3 + k)])
    old = loaded.model.generation_config.eos_token_id
    try:
        loaded.model.generation_config.eos_token_id = sorted(set(eng.eos_ids) | stops)
        eng.eos_ids = sorted(set(eng.eos_ids) | stops)
        verdicts = eng.judge_many(items)
        reasons = {v.finish_reason for v in verdicts}
        lengths = {v.completion_tokens for v in verdicts}
        assert "stop" in reasons and len(lengths) > 1
        with torch.no_grad():
            assert_parity(loaded, items, verdicts, eng.sampling)
    finally:
        loaded.model.generation_config.eos_token_id = old


def test_min_new_tokens_and_prefix_sharing_equal_unshared(loaded):
    sampling = SamplingParams(max_new_tokens=10, min_new_tokens=10)
    items = mixed_items()
    shared = engine(loaded, sampling=sampling, share_prefix=True)
    unshared = engine(loaded, sampling=sampling, share_prefix=False)
    a, b = shared.judge_many(items), unshared.judge_many(items)
    assert [v.raw_text for v in a] == [v.raw_text for v in b]
    assert max(abs(x.head_score - y.head_score) for x, y in zip(a, b, strict=True)) <= 1e-4
    assert all(v.completion_tokens == 10 for v in a)
    # prefill: one shared prefix per answer + each criterion's own suffix
    prompts = [shared.tokenizer(shared_text(shared, it))["input_ids"] for it in items]
    expected = 0
    for k in range(len(ANSWERS)):
        group = prompts[3 * k : 3 * k + 3]
        lcp = _lcp(group)
        expected += lcp + sum(len(p) - lcp for p in group)
    assert shared.stats["prefill_tokens"] == expected
    assert unshared.stats["prefill_tokens"] == sum(len(p) for p in prompts)


def shared_text(eng, item):
    from pollux.prompts import chat_text

    return chat_text(eng.tokenizer, eng.template.render(item))


def _lcp(seqs):
    n = 0
    while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


def test_shared_prefix_ends_in_the_criterion_section(loaded):
    eng = engine(loaded)
    prompts = [shared_text(eng, it) for it in mixed_items()[:3]]
    ids = [eng.tokenizer(p)["input_ids"] for p in prompts]
    prefix = eng.tokenizer.decode(ids[0][: _lcp(ids)])
    assert prefix.endswith("### Критерий оценки:\n")


def test_memory_bound_holds_and_does_not_change_results(loaded):
    items = mixed_items()
    big = engine(loaded)
    reference = big.judge_many(items)
    bound = 700
    small = engine(loaded, max_batch_tokens=bound, batch_size=4)
    verdicts = small.judge_many(items)
    assert small.stats["batches"] > 1
    assert small.stats["peak_kv_tokens"] <= bound
    assert [v.raw_text for v in verdicts] == [v.raw_text for v in reference]
    assert [v.head_score for v in verdicts] == pytest.approx([v.head_score for v in reference], abs=1e-4)


def test_context_overflow_is_an_item_error_not_a_batch_crash(loaded):
    items = mixed_items()[:4]
    eng = engine(loaded)
    short_len = len(eng.tokenizer(shared_text(eng, items[0]))["input_ids"])
    eng.context = short_len + 5  # item 0 fits with 5 new tokens; longer prompts don't fit at all
    verdicts = eng.judge_many(items)
    assert verdicts[0].error is None and verdicts[0].completion_tokens == 5
    assert verdicts[0].finish_reason == "length" and verdicts[0].head_score is not None
    lengths = [len(eng.tokenizer(shared_text(eng, it))["input_ids"]) for it in items]
    for v, n in zip(verdicts[1:], lengths[1:], strict=True):
        if n >= eng.context:
            assert v.error and f"prompt has {n} tokens" in v.error and v.score is None
    assert any(v.error for v in verdicts)


def test_sampling_is_seeded(loaded):
    items = mixed_items()[:3]
    s1 = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=1)
    a = engine(loaded, sampling=s1).judge_many(items)
    b = engine(loaded, sampling=s1).judge_many(items)
    assert [v.raw_text for v in a] == [v.raw_text for v in b]
    greedy = engine(loaded, sampling=SamplingParams(max_new_tokens=8)).judge_many(items)
    assert [v.raw_text for v in a] != [v.raw_text for v in greedy]


def test_generative_judge(tiny_generative_path):
    from pollux.checkpoint import load_judge

    gen = load_judge(tiny_generative_path, dtype="float32", device="cpu")
    eng = TransformersEngine(gen.model, gen.tokenizer, kind=gen.kind, name="gen",
                             sampling=SamplingParams(max_new_tokens=8))
    items = mixed_items()[:4]
    verdicts = eng.judge_many(items)
    for item, v in zip(items, verdicts, strict=True):
        ref = model_card_judge(gen.model, gen.tokenizer, item, max_new_tokens=8)
        assert v.raw_text == ref["text"] and ref["score"] is None
        assert v.head_score is None and v.text_score is None  # a random model writes no [RESULT]
        assert not v.valid and v.invalid_reason == "no score"


def test_judge_api_one_and_many(tiny_judge):
    item = mixed_items()[0]
    one = tiny_judge.judge(item)
    many = tiny_judge.judge_many([item.to_dict(), item])
    assert one.head_score == pytest.approx(many[0].head_score, abs=1e-5) == pytest.approx(many[1].head_score, abs=1e-5)
    seen = []
    tiny_judge.judge_many(mixed_items()[:3], on_verdict=lambda i, v: seen.append(i))
    assert sorted(seen) == [0, 1, 2]
    assert tiny_judge.describe()["sampling"]["max_new_tokens"] == 24


def test_a_failing_batch_is_retried_item_by_item_and_delivers_each_verdict_once(loaded):
    """A batch that fails after one row finished: the others are retried alone; nobody twice."""
    items = mixed_items()[:4]
    eng = engine(loaded, sampling=SamplingParams(max_new_tokens=4))
    original = eng._run_batch
    state: dict = {}

    def flaky(batch, done):
        jobs = [j for g in batch for j in g.jobs]
        if len(jobs) > 1:
            done(jobs[0].index, make_verdict(jobs[0].item, "[FEEDBACK] частично [RESULT] 1 [END]"))
            state.update(first=jobs[0].index, doomed=jobs[-1].index)
            raise RuntimeError("simulated out of memory")
        if jobs[0].index == state["doomed"]:
            raise RuntimeError("this item always fails")
        return original(batch, done)

    eng._run_batch = flaky
    seen: list[int] = []
    verdicts = eng.judge_many(items, on_verdict=lambda i, v: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]  # each exactly once
    assert verdicts[state["first"]].text_score == 1  # delivered before the failure: it stands
    assert "this item always fails" in verdicts[state["doomed"]].error
    others = [v for i, v in enumerate(verdicts) if i not in (state["first"], state["doomed"])]
    assert len(others) == 2 and all(v.error is None and v.head_score is not None for v in others)


def test_errors_of_the_callers_callback_propagate_unretried(loaded):
    eng = engine(loaded, sampling=SamplingParams(max_new_tokens=3))
    calls: list[int] = []

    def broken_store(i, v):
        calls.append(i)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        eng.judge_many(mixed_items()[:3], on_verdict=broken_store)
    assert len(calls) == 1


# ---- defect 5: the generate fallback gives every item its own token budget -----------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random non-Qwen2 judge (LlamaForCausalLM) with Qwen's tokenizer: the engine runs
    it through the batched `generate` fallback."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pollux.fixtures import QWEN25_VOCAB, build_tokenizer

    tokenizer = build_tokenizer(tmp_path_factory.mktemp("llama-tokenizer"))
    config = LlamaConfig(vocab_size=QWEN25_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         initializer_range=0.5, tie_word_embeddings=False,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_generate_fallback_gives_each_item_its_own_budget(tiny_llama):
    """Prompts of different lengths leave different room in the context: each item may generate
    up to its own room (not the batch's smallest), exactly as `generate` on that item alone."""
    model, tokenizer = tiny_llama
    items = mixed_items()[:4]  # two answers of different lengths
    sampling = SamplingParams(max_new_tokens=12, min_new_tokens=12)
    eng = TransformersEngine(model, tokenizer, kind="generative", name="llama", sampling=sampling)
    assert not eng.custom_forward
    lengths = [len(tokenizer(shared_text(eng, it))["input_ids"]) for it in items]
    eng.context = max(lengths) + 3  # the longest prompt has room for 3 tokens, the shortest for 12
    budgets = [min(12, eng.context - n) for n in lengths]
    assert len(set(budgets)) > 1 and max(budgets) == 12
    verdicts = eng.judge_many(items)
    assert eng.stats["batches"] == 1  # one batch, several budgets
    assert [v.completion_tokens for v in verdicts] == budgets
    for item, v, budget in zip(items, verdicts, budgets, strict=True):
        ref = model_card_judge(model, tokenizer, item, max_new_tokens=budget, min_new_tokens=budget)
        assert v.raw_text == ref["text"] and v.finish_reason == "length"


# ---- defect 8: the sampling generator lives on the logits' device ---------------------------


def test_sampling_generator_follows_the_model_device(loaded):
    from pollux.engine.hf import sampling_generator

    eng = engine(loaded, sampling=SamplingParams(max_new_tokens=4, temperature=0.7, seed=3))
    generator = sampling_generator(eng.device, eng.sampling)
    assert generator is not None and generator.device == eng.device
    assert sampling_generator(eng.device, SamplingParams(temperature=0)) is None
    # On CPU this cannot tell a CPU-only generator from a device-following one; the CUDA case
    # (temperature > 0 with CUDA logits) is checked by bench/gpu_check.sh.


# ---- the checkpoint's generation_config: repetition_penalty and precedence ------------------


def test_sampling_precedence_user_then_checkpoint_then_default():
    from transformers import GenerationConfig

    ckpt = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    assert SamplingParams().resolve(ckpt).to_dict() | {} == SamplingParams(
        temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05).to_dict()
    mine = SamplingParams(temperature=0, repetition_penalty=1.0).resolve(ckpt)
    assert (mine.temperature, mine.repetition_penalty, mine.greedy) == (0, 1.0, True)
    greedy_ckpt = GenerationConfig(do_sample=False, temperature=0.6, repetition_penalty=1.3)
    r = SamplingParams().resolve(greedy_ckpt)
    assert (r.temperature, r.repetition_penalty, r.top_k, r.top_p) == (0.0, 1.3, 0, 1.0)
    d = SamplingParams().resolve(None)
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.0, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0)


@pytest.fixture(scope="module")
def penalised_judge_path(tmp_path_factory):
    """A tiny judge whose generation_config.json sets repetition_penalty 1.3."""
    import json

    from pollux.fixtures import build_tiny_judge

    path = build_tiny_judge(tmp_path_factory.mktemp("tiny-judge-rp"))
    gen_file = path / "generation_config.json"
    cfg = json.loads(gen_file.read_text())
    cfg["repetition_penalty"] = 1.3
    gen_file.write_text(json.dumps(cfg))
    return path


def _make_a_prompt_token_tempting(loaded, item) -> int:
    """A random judge seldom writes a token of its prompt, so the penalty would change nothing.
    Give a prompt token X the output row of the token t the judge writes first, times 1.1: then
    X wins the first step (1.1·logit) unless penalised as a seen token (1.1/1.3·logit < logit)."""
    import torch

    from pollux.prompts import PromptTemplate, chat_text

    ids = loaded.tokenizer(chat_text(loaded.tokenizer, PromptTemplate().render(item)))["input_ids"]
    with torch.no_grad():
        first = int(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        tempting = next(t for t in reversed(ids[:-8]) if t != first)
        loaded.model.lm_head.weight[tempting] = 1.1 * loaded.model.lm_head.weight[first]
    return tempting


def test_repetition_penalty_from_the_checkpoint_matches_generate(penalised_judge_path):
    """pollux honours the checkpoint's repetition_penalty: same texts and scores as the model
    card's `generate` on that checkpoint; an explicit value overrides it."""
    from pollux.checkpoint import load_judge

    pen = load_judge(penalised_judge_path, dtype="float32", device="cpu")
    assert pen.model.generation_config.repetition_penalty == 1.3
    items = mixed_items()[:6]
    tempting = _make_a_prompt_token_tempting(pen, items[0])
    eng = TransformersEngine(pen.model, pen.tokenizer, kind=pen.kind, name="rp",
                             sampling=SamplingParams(max_new_tokens=16))
    assert eng.sampling.repetition_penalty == 1.3 and eng.describe()["sampling"]["repetition_penalty"] == 1.3
    verdicts = eng.judge_many(items)
    assert_parity(pen, items, verdicts, eng.sampling)
    # an explicit 1.0 turns it off: the tempting prompt token is written first …
    off = TransformersEngine(pen.model, pen.tokenizer, kind=pen.kind, name="rp",
                             sampling=SamplingParams(max_new_tokens=16, repetition_penalty=1.0))
    unpenalised = off.judge_many(items)
    first_token = pen.tokenizer(unpenalised[0].raw_text, add_special_tokens=False)["input_ids"][0]
    assert first_token == tempting
    assert unpenalised[0].raw_text != verdicts[0].raw_text
    # … and equals `generate` with the penalty off
    pen.model.generation_config.repetition_penalty = 1.0
    try:
        assert_parity(pen, items, unpenalised, off.sampling)
    finally:
        pen.model.generation_config.repetition_penalty = 1.3


def test_repetition_penalty_in_the_generate_fallback(tiny_llama):
    model, tokenizer = tiny_llama
    items = mixed_items()[:2]
    model.generation_config.repetition_penalty = 1.3
    try:
        eng = TransformersEngine(model, tokenizer, kind="generative", name="llama",
                                 sampling=SamplingParams(max_new_tokens=10))
        assert eng.sampling.repetition_penalty == 1.3
        for item, v in zip(items, eng.judge_many(items), strict=True):
            assert v.raw_text == model_card_judge(model, tokenizer, item, max_new_tokens=10)["text"]
    finally:
        model.generation_config.repetition_penalty = None


def test_library_defaults_are_not_the_checkpoints_word():
    """transformers 4.x gives an unset `top_k` its default of 50; only what the checkpoint's file
    sets may override pollux's defaults (found by CI's minimum-versions job)."""
    from transformers import GenerationConfig

    r = SamplingParams().resolve({"do_sample": True, "temperature": 0.7})  # generation_config.json's fields
    assert (r.temperature, r.top_k, r.top_p) == (0.7, 0, 1.0)
    assert SamplingParams().resolve(GenerationConfig(do_sample=True, top_k=20)).top_k == 20
