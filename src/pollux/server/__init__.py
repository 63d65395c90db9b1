"""`pollux serve`: a judge behind HTTP (FastAPI + uvicorn).

* `app.create_app(judge, ServerConfig(...))` — the ASGI app (judge API, OpenAI-compatible chat
  completions, models, health, Prometheus metrics);
* `batcher.MicroBatcher` — concurrent requests batched into one engine call;
* `prompt_parse` — chat messages read back into judge items;
* `replies` — the chat reply formats (`full`, `score`) and streamed chunks;
* `run.serve(...)` — load a checkpoint and run uvicorn with graceful shutdown.
"""

from pollux.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
