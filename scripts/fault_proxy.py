#!/usr/bin/env python
"""A fault-injecting HTTP proxy: put it in front of a judge server to see a client survive.

    python scripts/fault_proxy.py --upstream http://127.0.0.1:8000 --port 8001 \
        --fail-rate 0.2 --delay-rate 0.1 --delay-s 5

Every proxied request draws one fate (seeded, so a run can be repeated):

* `fail-rate` of them fail — half with 429 + `Retry-After` before reaching the server, half with
  500 *after* the server answered (the work is done, the response is lost: a retrying client
  makes the server judge that item again but must still record it once);
* `delay-rate` of them are held for `delay-s` seconds (set it past the client's timeout), then
  forwarded — the server does the work for a client that has already given up;
* the rest are forwarded untouched.

`GET /_proxy/stats` returns the counts per fate as JSON; `/healthz` is passed through without
faults so readiness checks stay simple. Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections import Counter
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
               "proxy-authorization", "proxy-authenticate", "trailer", "content-encoding"}


def build_app(upstream: str, *, fail_rate: float, delay_rate: float, delay_s: float, retry_after: int,
              seed: int) -> FastAPI:
    if not 0 <= fail_rate + delay_rate <= 1:
        raise ValueError("fail-rate + delay-rate must lie in [0, 1]")
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    client_box: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=None) as client:
            client_box["c"] = client
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def forward(request: Request, path: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        upstream_response = await client_box["c"].request(
            request.method, "/" + path, params=request.query_params, headers=headers, content=await request.body()
        )
        out_headers = {k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(upstream_response.content, status_code=upstream_response.status_code, headers=out_headers)

    @app.get("/_proxy/stats")
    async def proxy_stats() -> dict[str, int]:
        return dict(stats)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def proxy(request: Request, path: str) -> Response:
        if path == "healthz":
            return await forward(request, path)
        draw = rng.random()
        if draw < fail_rate / 2:
            stats["429"] += 1
            return JSONResponse({"error": {"message": "injected fault: rate limited", "type": "rate_limit_error",
                                           "code": 429}}, status_code=429, headers={"Retry-After": str(retry_after)})
        if draw < fail_rate:
            await forward(request, path)  # the server did the work; the client never sees it
            stats["500"] += 1
            return JSONResponse({"error": {"message": "injected fault: server error", "type": "server_error",
                                           "code": 500}}, status_code=500)
        if draw < fail_rate + delay_rate:
            stats["delayed"] += 1
            await asyncio.sleep(delay_s)
        else:
            stats["passed"] += 1
        return await forward(request, path)

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="base URL of the real server, e.g. http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fail-rate", type=float, default=0.2, help="share of requests answered 429/500")
    p.add_argument("--delay-rate", type=float, default=0.1, help="share of requests held for --delay-s")
    p.add_argument("--delay-s", type=float, default=5.0, help="hold time; set it past the client's timeout")
    p.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with injected 429s")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    app = build_app(a.upstream, fail_rate=a.fail_rate, delay_rate=a.delay_rate, delay_s=a.delay_s,
                    retry_after=a.retry_after, seed=a.seed)
    print(f"fault proxy on http://{a.host}:{a.port} → {a.upstream} (fail {a.fail_rate:.0%}, "
          f"delay {a.delay_rate:.0%} × {a.delay_s:g} s)", file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
