#!/usr/bin/env python
"""A fake OpenAI-compatible judge on loopback, standard library only: for trying `--judge openai:…`
where no LLM server is at hand (CI's core-only step, `.ci/core-only`).

    python scripts/fake_openai_judge.py --port-file port.txt &
    pollux evaluate examples/answers.jsonl --judge openai:fake --base-url http://127.0.0.1:$(cat port.txt)/v1 …

`POST /v1/chat/completions` answers every prompt with a POLLUX-shaped reply, `[FEEDBACK] … [RESULT] n
[END]`, where n is the lowest score of the prompt's rubric (the first line that starts with a digit)
so the verdict is valid on any scale; `GET /v1/models` lists the one model. Port 0 (the default) takes a
free port, written to `--port-file` once the server listens, so a script can wait for that file.
"""

from __future__ import annotations

import argparse
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_FIRST_LEVEL = re.compile(r"^\s*(-?\d+)\s*[:.)]", re.MULTILINE)


def reply_for(prompt: str) -> str:
    """A reply in the POLLUX format; its score is the rubric's first level (0 when none is found)."""
    match = _FIRST_LEVEL.search(prompt.split("Шкала оценивания", 1)[-1])
    score = match.group(1) if match else "0"
    return f"[FEEDBACK] Ответ проверен фальшивым судьёй. [RESULT] {score} [END]"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        content = reply_for(prompt)
        self._send(200, {"id": "fake", "object": "chat.completion", "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet: the client's output is what is read
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_port))
        tmp.replace(args.port_file)  # whole, never half-written
    server.serve_forever()


if __name__ == "__main__":
    main()
