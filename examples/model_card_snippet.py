"""The model card's usage code for pollux-judge-7b-r — its code, with these differences only:

1. `MODEL_PATH` comes from the command line; the card loads "ai-forever/pollux-judge-7b-r" from
   the Hugging Face Hub (pollux never downloads weights).
2. The item judged (instruction, reference answer, answer, criterion, rubrics) is ours, a short
   Russian arithmetic example; the card's own example item is not copied here.
3. `from_pretrained(..., dtype="auto")` is spelled as transformers 5 spells it; with a
   transformers older than 4.56 the same argument is `torch_dtype="auto"`.

The prompt template is the card's copy as the card prints it — the five `###` sections with no
blank lines between them and a trailing newline (pollux's `--template model-card`), which differs
from the POLLUX code base's judge prompt (pollux's default: one blank line between sections, no
trailing newline). Generation is the card's: `generate` with `max_new_tokens=4096` and nothing
else, so the checkpoint's `generation_config.json` decides the rest (e.g. `repetition_penalty`,
or sampling when it sets `do_sample`), then a second full forward for `regr_output`.

It needs only torch and transformers (plus accelerate for device_map) — not pollux. pollux's tests
run it, with pollux made unimportable, against checkpoints that pollux saved, and check that it
prints the same rationale and score as `pollux judge --template model-card`.

    python examples/model_card_snippet.py PATH/TO/CHECKPOINT
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_PATH = sys.argv[1]  # the model card loads "ai-forever/pollux-judge-7b-r" from the hub

PROMPT_TEMPLATE = """### Задание для оценки:
{instruction}
### Эталонный ответ:
{reference_answer}
### Ответ для оценки:
{answer}
### Критерий оценки:
{criteria_name}
### Шкала оценивания по критерию:
{criteria_rubrics}
"""

instruction = "Сколько будет 17 умножить на 3? Ответь числом и коротко поясни."
reference_answer = "51"
answer = "17 × 3 = 51: три раза по семнадцать — это 17 + 17 + 17."
criteria_name = "Правильность ответа"
criteria_rubrics = """0: ответ неверный или отсутствует.

1: ответ частично верный: ход решения верный, но итог содержит ошибку.

2: ответ полностью верный."""

prompt = PROMPT_TEMPLATE.format(
    instruction=instruction,
    reference_answer=reference_answer,
    answer=answer,
    criteria_name=criteria_name,
    criteria_rubrics=criteria_rubrics,
)

tokenizer = AutoTokenizer.from_pretrained(MODEL_PATH)
model = AutoModelForCausalLM.from_pretrained(
    MODEL_PATH,
    dtype="auto",
    device_map="auto",
    trust_remote_code=True,
)

messages = [{"role": "user", "content": prompt}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
model_inputs = tokenizer([text], return_tensors="pt").to(model.device)

sequence_ids = model.generate(**model_inputs, max_new_tokens=4096)
generated_ids = [
    output_ids[len(input_ids):] for input_ids, output_ids in zip(model_inputs.input_ids, sequence_ids)
]
response = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
regr_score = model(input_ids=sequence_ids).regr_output.item()

print(response)
print(regr_score)
