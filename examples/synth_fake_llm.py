"""A deterministic fake OpenAI-compatible LLM server: `pollux synth`'s offline demo (docs/synth.md,
examples/synth_offline.toml), its tests (tests/synth_fakes.py) and its benchmark. Needs the `server`
extra (FastAPI, uvicorn); listens on 127.0.0.1 only.

Run as a separate process: `python examples/synth_fake_llm.py --port P [--delay S] [--refuse]`. It answers
`/v1/chat/completions` by what the prompt asks for (the synth prompts are recognisable):

* an instruction-writing prompt → a plausible Russian instruction for the task in the prompt, built
  from sentence pools; about 10% are English or mixed-language, about 5% are the same stock text
  (exact duplicates), so the filter has something to drop;
* the teacher's prompt → `[FEEDBACK] … [RESULT] n [END]` with n inside the rubric's scale, except
  about 30% broken replies (no `[END]`, no result, a score outside the scale) — which one depends on
  the request's seed, so asking again can succeed;
* anything else → a Russian answer of a few sentences.

Everything is a function of the request body (model, messages, seed): the same request always gets
the same reply. `--delay` sleeps before answering (the benchmark's 50 ms); `--refuse` answers every
call with HTTP 503 (a broken endpoint); `--reply JSON` answers every call with that one text (a JSON
string, so a test can send what Python cannot print: a lone surrogate, a NUL). GET /health says when
the server is up and how many requests it answered.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

TOPICS = ["городской транспорт", "школьная библиотека", "экология реки", "история Новгорода", "домашний бюджет",
          "сон и здоровье", "космические телескопы", "русская поэзия", "малый бизнес", "фотосинтез",
          "пеший туризм", "цифровая грамотность", "кулинария Кавказа", "шахматные дебюты", "квантовые компьютеры",
          "волонтёрство", "архитектура модерна", "правила дорожного движения", "разведение пчёл", "вулканы Камчатки"]
OPENERS = ["Составь", "Подготовь", "Напиши", "Придумай", "Сформулируй", "Разработай", "Опиши", "Объясни"]
FORMS = ["подробный текст", "краткую памятку", "пошаговый план", "список из пяти пунктов", "письмо коллеге",
         "небольшое эссе", "таблицу сравнения", "ответ для школьника"]
AUDIENCE = ["для студентов первого курса", "для пенсионеров", "для руководителя отдела", "для подростков",
            "для жителей небольшого города", "для начинающих специалистов", "для родителей", "для туристов"]
EXTRAS = ["Используй не более двухсот слов.", "Приведи два примера из жизни.", "Избегай канцелярита.",
          "Добавь вывод в конце.", "Укажи возможные риски.", "Сохрани дружелюбный тон.",
          "Обоснуй каждый пункт.", "Заверши текст вопросом к читателю."]
ENGLISH = ["Write a short essay about {topic} for a school newsletter and include three examples.",
           "Please explain how {topic} works, step by step, in simple words for beginners."]
MIXED = "Напиши review про {topic}: what are the main pros and cons, and how should beginners get started quickly?"
STOCK = "Напиши короткое эссе о пользе чтения книг для школьников."
ANSWER = ["Вот подробный ответ на ваш вопрос.", "Сначала разберём основные понятия.",
          "Важно учитывать контекст задачи.", "Рассмотрим несколько вариантов решения.",
          "Первый шаг — собрать исходные данные.", "Затем стоит сравнить альтернативы.",
          "Итоговый вывод зависит от целей читателя.", "Надеюсь, это поможет в работе.",
          "Обратите внимание на типичные ошибки.", "Пример из практики показывает пользу подхода."]
FEEDBACK = ["Ответ в целом соответствует заданию, но местами поверхностен.",
            "Модель корректно поняла запрос и изложила мысль последовательно.",
            "В ответе есть неточности, которые снижают его ценность.",
            "Текст написан грамотно, структура понятна читателю."]


def pick(seq: list[str], h: bytes, i: int) -> str:
    return seq[h[i] % len(seq)]


def digest(*parts: Any) -> bytes:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).digest()


def instruction(prompt: str, h: bytes) -> str:
    task = re.search(r"Тип задачи: (.+)", prompt)
    level = re.search(r"Уровень сложности: (.+)", prompt)
    topic = pick(TOPICS, h, 0)
    roll = h[1] % 100
    if roll < 7:
        return pick(ENGLISH, h, 2).format(topic=topic)
    if roll < 10:
        return MIXED.format(topic=topic)
    if roll < 15:
        return STOCK
    task_name = task.group(1).split(" → ")[-1].lower() if task else "задание"
    return (f"{pick(OPENERS, h, 3)} {pick(FORMS, h, 4)} на тему «{topic}» {pick(AUDIENCE, h, 5)} "
            f"(задача: {task_name}, уровень: {level.group(1) if level else 'средний'}). "
            f"{pick(EXTRAS, h, 6)} {pick(EXTRAS, h, 7)} Тема рассматривается в связи с тем, что "
            f"{pick(TOPICS, h, 8)} и {pick(TOPICS, h, 9)} важны для читателя.")


def verdict(prompt: str, h: bytes) -> str:
    scale = prompt.split("### Шкала оценивания по критерию:", 1)[-1]
    levels = sorted({int(m) for m in re.findall(r"^(-?\d+)\s*[:—-]", scale, flags=re.M)}) or [0, 1, 2]
    score = levels[h[0] % len(levels)]
    feedback = f"{pick(FEEDBACK, h, 1)} {pick(FEEDBACK, h, 2)}"
    roll = h[3] % 100
    if roll < 10:
        return f"[FEEDBACK] {feedback} [RESULT] {score}"  # no [END]: no score
    if roll < 20:
        return f"[FEEDBACK] {feedback}"  # no result at all
    if roll < 30:
        return f"[FEEDBACK] {feedback} [RESULT] {levels[-1] + 3} [END]"  # outside the scale
    return f"[FEEDBACK] {feedback} [RESULT] {score} [END]"


def answer(h: bytes) -> str:
    return " ".join(pick(ANSWER, h, i) for i in range(2 + h[10] % 4))


def reply_for(body: dict[str, Any]) -> str:
    prompt = body["messages"][-1]["content"]
    h = digest(body.get("model"), body["messages"], body.get("seed"))
    if "Придумай ОДНО новое задание" in prompt:
        return instruction(prompt, h)
    if "[FEEDBACK] <обоснование>" in prompt:
        return verdict(prompt, h)
    return answer(h)


def make_app(delay: float, refuse: bool, fixed: str | None = None) -> Any:
    app = FastAPI()
    counts = {"requests": 0, "active": 0, "max_active": 0}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, **counts}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        counts["requests"] += 1
        counts["active"] += 1
        counts["max_active"] = max(counts["max_active"], counts["active"])
        try:
            body = await request.json()
            if delay:
                await asyncio.sleep(delay)
        finally:
            counts["active"] -= 1
        if refuse:
            return JSONResponse({"error": {"message": "this server refuses every call"}}, status_code=503)
        text = reply_for(body) if fixed is None else fixed
        payload = {
            "id": "fake", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(body["messages"][-1]["content"]) // 4,
                      "completion_tokens": len(text) // 4},
        }
        # ASCII JSON: a lone surrogate travels as its \u escape, as a real server's JSON may carry it
        return Response(json.dumps(payload), media_type="application/json")

    return app


class FakeServer:
    """This script as a separate process on a free loopback port: `with FakeServer() as srv: srv.url`."""

    def __init__(self, *args: str):
        from pollux.server.launch import free_port

        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeServer:
        import httpx

        self.proc = subprocess.Popen([sys.executable, __file__, "--port", str(self.port), *self.args])
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"fake server on port {self.port} did not start")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--refuse", action="store_true")
    parser.add_argument("--reply", type=json.loads, default=None, help="every reply's text, as a JSON string")
    args = parser.parse_args()
    uvicorn.run(make_app(args.delay, args.refuse, args.reply), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
