"""Start a `pollux serve` process and wait until it answers — for scripts, benchmarks and tests.

Real processes on loopback, so what is measured or tested is what users run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll `url` (e.g. .../healthz) until it answers 200; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def start_serve(
    model: str | Path,
    port: int,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    log_path: str | Path | None = None,
    timeout: float = 120.0,
) -> subprocess.Popen:
    """`pollux serve --model MODEL --port PORT ARGS…` on 127.0.0.1, returned once /healthz answers."""
    cmd = [sys.executable, "-c", "from pollux.cli import main; main()", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *args]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
