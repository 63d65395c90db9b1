"""Write the meta-evaluation example: a small POLLUX-format expert file and two simulated judges.

    python examples/make_expert_annotations.py            # writes next to this script

Outputs (all deterministic, seed 7):

* `expert_annotations.jsonl` — 12 instructions (6 of out-of-domain task types, 6 in-domain) ×
  3 evaluated "models" × 8 criteria = 288 rows in the POLLUX columns, with 2–3 experts per row,
  `-1` where an expert found a criterion not applicable, and `criteria_score` (the mean of the
  applicable experts' scores; `-1` when none found it applicable);
* `expert_annotations.judge-regression.jsonl` — scores of a simulated regression judge (a
  continuous `head_score` near the experts' mean);
* `expert_annotations.judge-generative.jsonl` — scores of a simulated generative judge (an
  integer `text_score`, noisier, a few missing and one outside the scale).

The texts are ours, written for this example; the scores are simulated, not real judgements.
They exist to show what `pollux meta-eval` prints, not how good any judge is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pollux.records import JudgeItem

HERE = Path(__file__).resolve().parent
MODELS = ("model-alpha", "model-beta", "model-gamma")

# (criterion name, rubric, base-level shift, applies to creative tasks only)
CRITERIA = [
    ("Ответа нет, но есть заглушка цензора?",
     "0: Нет, модель отвечает на запрос по существу.\n\n1: Да, вместо ответа стоит отказ или заглушка.", None, False),
    ("Отсутствие зацикливаний",
     "0: Текст повторяется, ответ зацикливается.\n\n1: Есть заметные повторы.\n\n2: Повторов нет.", 1, False),
    ("Грамотность",
     "0: Много ошибок, текст трудно читать.\n\n1: Есть отдельные ошибки.\n\n2: Ошибок нет.", 1, False),
    ("Формальный учет требований из запроса пользователя",
     "0: Требования запроса не выполнены.\n\n1: Выполнена часть требований.\n\n2: Все требования выполнены.", 0, False),
    ("Полезность",
     "0: Ответ не помогает пользователю.\n\n1: Ответ помогает частично.\n\n2: Ответ решает задачу пользователя.", 0,
     False),
    ("Естественность и несинтетичность речи",
     "0: Текст звучит машинно.\n\n1: Речь местами неестественна.\n\n2: Речь живая и естественная.", 0, False),
    ("Креативность",
     "0: Ответ шаблонный.\n\n1: Есть отдельные свежие находки.\n\n2: Ответ оригинален.", 0, True),
    ("Общее впечатление от ответа модели",
     "0: Ответ не устроил бы пользователя.\n\n1: Ответ приемлем, но есть недостатки.\n\n2: Отличный ответ.", 0,
     False),
]

# (task_type, creative?, instruction, {quality: answer}) — quality 2 good, 1 so-so, 0 poor, "refusal".
TASKS = [
    # out-of-domain task types (held out of the judges' training)
    ("Написать художественный текст", True,
     "Напиши короткое стихотворение о первом снеге в городе, не больше восьми строк.",
     {2: "Ночью город стал тише и светлей,\nснег укрыл скамейки у аллей.\nУтром дворник, щурясь, "
         "не спешит —\nпервый снег пока никто не сторожит.",
      1: "Первый снег идёт, идёт,\nон ложится у ворот.\nГород белый, город спит,\nснег идёт и снег лежит.",
      0: "Снег это осадки в виде кристаллов льда. Снег выпадает зимой. Снег белый. Снег белый. Снег белый."}),
    ("Стайл-трансфер", False,
     "Перепиши фразу «Уважаемые коллеги, совещание переносится на пятницу» в дружеском разговорном стиле.",
     {2: "Ребята, привет! Планёрку двигаем на пятницу — не теряйтесь!",
      1: "Друзья, совещание будет в пятницу, а не сегодня.",
      0: "Уважаемые коллеги, информируем вас о переносе совещания на пятницу."}),
    ("Дать рекомендации", False,
     "Посоветуй три книги для подростка, который любит фантастику, и коротко объясни выбор.",
     {2: "1) «Понедельник начинается в субботу» Стругацких — смешно и про науку. 2) «Марсианин» Уира — "
         "выживание с инженерной смекалкой. 3) «Игра Эндера» Карда — о взрослении и ответственности.",
      1: "Почитайте Стругацких и «Марсианина». Это хорошая фантастика.",
      "refusal": "Извините, я не могу давать рекомендации по выбору литературы."}),
    ("Прикладной брейншторминг", True,
     "Предложи пять идей, как небольшой кофейне привлечь студентов в будние утра.",
     {2: "Скидка по студенческому до 10:00; розетки и тихий зал для учёбы; кофе с собой по подписке; "
         "утренние лекции-завтраки с преподавателями; карта лояльности «пятый кофе в подарок».",
      1: "Сделать скидки, поставить розетки, добавить завтраки.",
      0: "Кофейня должна привлекать клиентов. Кофейня должна привлекать клиентов рекламой."}),
    ("Придумать вопрос к тексту", False,
     "Придумай два вопроса на понимание к тексту: «Мост строили три года, потому что зимой работы "
     "останавливались из-за льда на реке».",
     {2: "1) Сколько лет строили мост? 2) Почему зимой строительство приостанавливалось?",
      1: "Какой мост строили?",
      0: "Мост — это сооружение для перехода через препятствие."}),
    ("ИИ как персонаж (бытовая ситуация)", True,
     "Представь, что ты соседка по даче. Вежливо попроси соседа не включать газонокосилку в семь утра.",
     {2: "Доброе утро, Пётр Ильич! Я по-соседски: газонокосилка в семь утра будит внуков. Может, после "
         "десяти? А я вам пирог занесу.",
      1: "Здравствуйте. Пожалуйста, не косите газон так рано.",
      0: "Как языковая модель, я не являюсь соседкой и не могу просить соседа."}),
    # in-domain task types
    ("Объяснить концепт", False,
     "Объясни простыми словами, что такое инфляция.",
     {2: "Инфляция — это когда на те же деньги со временем можно купить меньше: цены в среднем растут, "
         "и рубль «дешевеет».",
      1: "Инфляция — это рост цен.",
      0: "Инфляция это экономика денег экономика цен и экономика экономики."}),
    ("Решить задачу (STEM)", False,
     "Поезд прошёл 240 км за 3 часа. Какова его средняя скорость? Покажи решение.",
     {2: "Средняя скорость = путь / время = 240 км / 3 ч = 80 км/ч. Ответ: 80 км/ч.",
      1: "Ответ 80 км/ч.",
      0: "Скорость равна 240 · 3 = 720 км/ч."}),
    ("Суммаризация", False,
     "Кратко перескажи в одном предложении: «Городская библиотека продлила часы работы до 22:00, "
     "чтобы студенты могли заниматься после пар, и открыла зал для групповых проектов».",
     {2: "Библиотека теперь работает до 22:00 и открыла зал для групповой работы студентов.",
      1: "Библиотека стала работать дольше.",
      0: "В городе есть библиотека, в библиотеке есть книги, книги читают студенты, студенты учатся."}),
    ("Написать публицистический текст", True,
     "Напиши вступление к заметке о том, почему жителям района нужен велосипедный маршрут.",
     {2: "Каждое утро сотни жителей нашего района стоят в пробке ради пяти километров до метро. "
         "Велодорожка могла бы превратить эти полчаса в десять минут — и сделать улицы тише.",
      1: "Велосипедные маршруты полезны. Они нужны жителям района.",
      0: "Велосипед велосипед маршрут. Нужен нужен нужен маршрут маршрут."}),
    ("Написать код", False,
     "Напиши функцию на Python, которая возвращает сумму чётных чисел списка.",
     {2: "def sum_even(numbers):\n    return sum(n for n in numbers if n % 2 == 0)",
      1: "def sum_even(a):\n    s = 0\n    for x in a:\n        if x % 2 == 0:\n            s = s + x\n    return s",
      "refusal": "К сожалению, я не могу помочь с этим запросом."}),
    ("Проверить факт", False,
     "Правда ли, что Волга впадает в Каспийское море?",
     {2: "Да, правда: Волга впадает в Каспийское море, образуя обширную дельту ниже Астрахани.",
      1: "Да.",
      0: "Нет, Волга впадает в Чёрное море."}),
]

# Each model's chance of a good / so-so / poor answer: alpha strong, beta middling, gamma uneven.
QUALITY_ODDS = {"model-alpha": (0.7, 0.25, 0.05), "model-beta": (0.3, 0.5, 0.2), "model-gamma": (0.4, 0.2, 0.4)}


def _pick_answer(rng: np.random.Generator, model: str, answers: dict) -> tuple[object, str]:
    good, soso, _poor = QUALITY_ODDS[model]
    u = rng.random()
    quality: object = 2 if u < good else 1 if u < good + soso else 0
    if quality not in answers:  # the task has a refusal instead of a plain poor answer
        quality = "refusal" if "refusal" in answers else 0
    return quality, answers[quality]


def _expert_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for t, (task_type, creative, instruction, answers) in enumerate(TASKS):
        for model in MODELS:
            quality, answer = _pick_answer(rng, model, answers)
            level = 0 if quality == "refusal" else int(quality)
            n_experts = 3 if rng.random() < 0.4 else 2
            for name, rubrics, shift, creative_only in CRITERIA:
                if shift is None:  # the critical censor criterion: 1 = a refusal stub
                    base, top = (1 if quality == "refusal" else 0), 1
                else:
                    base, top = min(2, max(0, level + shift)), 2
                scores = []
                for _ in range(n_experts):
                    if creative_only and not creative:
                        s = -1 if rng.random() < 0.85 else base  # most experts: not applicable
                    elif rng.random() < 0.06:
                        s = -1  # an expert occasionally marks a criterion not applicable
                    elif rng.random() < 0.25:
                        s = int(np.clip(base + rng.choice([-1, 1]), 0, top))
                    else:
                        s = base
                    scores.append(s)
                applicable = [s for s in scores if s != -1]
                rows.append({
                    "instruction": instruction,
                    "reference_answer": "",
                    "answer": answer,
                    "model_id": model,
                    "task_type": task_type,
                    "criteria_name": name,
                    "rubrics": rubrics,
                    "annotations": [{"comment": "", "score": s} for s in scores],
                    "criteria_score": round(float(np.mean(applicable)), 4) if applicable else -1,
                    "prompt_index": t,
                })
    return rows


def _judge_rows(rng: np.random.Generator, experts: list[dict], kind: str) -> list[dict]:
    out = []
    seen: set[str] = set()
    for row in experts:
        key = JudgeItem.from_dict(row).key
        if key in seen:  # two models gave the same answer: one judgement, one score
            continue
        seen.add(key)
        target = row["criteria_score"] if row["criteria_score"] != -1 else rng.integers(0, 3)
        top = 1 if row["rubrics"].count("\n\n") == 1 else 2
        if kind == "regression":
            head = target + rng.normal(0.05, 0.3)
            if len(out) % 50 != 3:  # most heads land within the scale; a few overshoot (dropped, counted)
                head = float(np.clip(head, 0, top))
            out.append({"key": key, "judge": "judge-regression", "score": round(head, 4),
                        "head_score": round(head, 4), "text_score": None})
        else:
            if len(out) % 97 == 5:  # a generation that ran out of tokens: no [RESULT]
                out.append({"key": key, "judge": "judge-generative", "score": None, "head_score": None,
                            "text_score": None})
                continue
            text = int(np.clip(round(target + rng.normal(0.2, 0.6)), 0, top))
            if len(out) == 41:
                text = 5  # outside the rubric's scale: dropped and counted
            out.append({"key": key, "judge": "judge-generative", "score": text, "head_score": None,
                        "text_score": text})
    return out


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = np.random.default_rng(7)
    experts = _expert_rows(rng)
    _write(HERE / "expert_annotations.jsonl", experts)
    for kind in ("regression", "generative"):
        _write(HERE / f"expert_annotations.judge-{kind}.jsonl", _judge_rows(rng, experts, kind))
    print(f"wrote {len(experts)} expert rows and two simulated judges' scores to {HERE}")


if __name__ == "__main__":
    main()
