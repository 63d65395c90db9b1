"""The Ray Data executor: each worker lives in an actor of a Ray Data actor pool.

`ray.data.from_items` → `map_batches(_ActorWorker, compute=ActorPoolStrategy(size=workers), num_cpus=…,
num_gpus=…)` →
`iter_batches`, so the driver reads result batches as they stream back and stays the only writer of
its store. Rows travel as one JSON string column: Arrow would otherwise infer (and mangle) types of
nested, heterogeneous JSON values.

Faults, and who handles them:

* a worker that *raises* — the actor builds a fresh worker and retries the batch itself, up to
  `max_retries` times, then raises `BatchFailed` naming the batch's first key (the run stops);
* an actor *process that dies* (killed, OOM) — Ray restarts the actor (`max_restarts=-1`) and
  resubmits its in-flight tasks, each up to `max_retries` times (`max_task_retries`), so a batch
  that kills every process it lands on is reported instead of looped on forever;
* a factory that raises (no model, bad endpoint) — the actor never starts; Ray Data fails the
  run at the first such death and the factory's message reaches the user.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pollux.executor import (
    ExecutorError,
    ExecutorOptions,
    Row,
    Worker,
    WorkerFactory,
    batch_failed_message,
    build_failed_message,
    first_key,
    run_worker,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

RAY_MISSING = "Ray is not installed; the --ray mode needs the `ray` extra: pip install 'pollux[ray]'"
CONNECT_TIMEOUT_S = 30.0  # a cluster address that does not answer within this is an error, not a hang
_COLUMN = "row"
_MAX_BLOCKS = 1000  # input blocks of about one batch each, up to this many (millions of rows: bigger blocks)
_OUR_ERROR = re.compile(r"(?:BatchFailed|WorkerBuildFailed): (.+)")


class BatchFailed(RuntimeError):
    """A batch failed on fresh workers `max_retries + 1` times; the message names its first key."""


class WorkerBuildFailed(RuntimeError):
    """The worker factory raised inside an actor (e.g. the model could not be loaded)."""


class _ActorWorker:
    """The callable class Ray Data runs in each actor: one built worker, JSON rows in and out (a
    `Streaming` worker's parts gathered into one result batch)."""

    def __init__(self, make_worker: WorkerFactory, max_retries: int) -> None:
        self._make_worker = make_worker
        self._max_retries = max_retries
        self._fn = self._build()

    def _build(self) -> Worker:
        try:
            return self._make_worker()
        except Exception as exc:
            raise WorkerBuildFailed(build_failed_message(exc)) from exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        rows = [json.loads(text) for text in batch.column(_COLUMN).to_pylist()]
        result = self._run(rows)
        try:  # encoding too: a lone surrogate passes json.dumps and fails in pa.array (UnicodeEncodeError)
            texts = [json.dumps(row, ensure_ascii=False) for row in result]
            return pa.table({_COLUMN: pa.array(texts, type=pa.string())})
        except (TypeError, ValueError) as exc:
            raise BatchFailed(f"batch starting at key {first_key(rows)!r}: a result row is not JSON text in "
                              f"UTF-8: {type(exc).__name__}: {exc}") from exc

    def _run(self, rows: list[Row]) -> list[Row]:
        """The batch on this actor's worker; after an error, on a fresh one, `max_retries` times."""
        for attempt in range(self._max_retries + 1):
            parts: list[Row] = []  # a `Streaming` worker's parts, gathered: they travel back together
            try:
                run_worker(self._fn, rows, parts.extend)
                return parts
            except Exception as exc:
                if attempt == self._max_retries:
                    raise BatchFailed(batch_failed_message(rows, attempt + 1, self._max_retries, exc)) from exc
                self._fn = self._build()
        raise AssertionError("unreachable: the last attempt returns or raises")


def import_ray() -> Any:
    """`ray`, or an ExecutorError that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ExecutorError(RAY_MISSING) from exc


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens on (ray.init would retry it for a long time)."""
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"bad Ray cluster address {address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc


def quiet_ray_environment() -> None:
    """Before `ray.init`: Ray's C++ core logs only fatal errors to stderr (its errors reach the
    driver as exceptions anyway); a user's own setting wins. And Ray's notices go to stderr."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    notices_to_stderr()


def notices_to_stderr() -> None:
    """Route the cluster's notices to this driver (e.g. "(raylet) Task MapWorker(…).submit failed.
    There are 3 retries remaining…" after a worker dies) to stderr, where logs go.

    Why: Ray's driver prints them to *stdout*, from a thread of its own, whatever `log_to_driver`
    says (`ray._private.worker.listen_error_messages` → `print_to_stdstream(…, is_err=False)`), and
    keeps printing them for a while after a run — so `pollux evaluate … --ray … > summary.json`
    held notices before and after the JSON. There is no setting for it: the one function that
    chooses the stream is wrapped to choose stderr (looked up at each call, so this works before or
    after `ray.init`). A Ray without that function is left as it is."""
    try:
        worker_module = importlib.import_module("ray._private.worker")
    except ImportError:
        return
    original = getattr(worker_module, "print_to_stdstream", None)
    if original is None or getattr(original, "pollux_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr.pollux_to_stderr = True  # type: ignore[attr-defined]
    worker_module.print_to_stdstream = to_stderr  # type: ignore[attr-defined]


def start_local_cluster(num_cpus: int = 2) -> Any:
    """Start a one-machine Ray cluster inside this process, on loopback only, and return `ray`
    (tests, benchmarks, trying `--ray auto` without a cluster; stop it with `ray.shutdown()`).
    Without `_node_ip_address` Ray binds its servers to the machine's address on all interfaces."""
    ray = import_ray()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    quiet_ray_environment()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus, log_to_driver=False,
             logging_level=logging.WARNING)
    return ray


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit("/", 1)[0].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_machine_cluster() -> None:
    """A head bound to loopback (`ray start --head --node-ip-address=127.0.0.1`, or with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is reached only by a driver in Ray's one-machine mode:
    otherwise Ray gives this driver's node the machine's network address, the head never sees it,
    and the connection times out although the head's port answers. So for a loopback address that
    mode is switched on (Ray reads it when imported; if it already was, its constant is set too).
    A user's own setting of the variable wins."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].strip().lower() in ("0", "false"):
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def _not_main_thread_notice(record: logging.LogRecord) -> bool:
    return "not the main thread" not in record.getMessage()


def connect(address: str) -> Any:
    """Connect this driver to a Ray cluster once ("auto" or an address); reuse an existing connection
    (with a warning when it is to another address than the one asked for).

    `ray.init` retries an address that accepts TCP but never answers as Ray for many minutes, so it
    runs in a helper thread and the connection is given up after `CONNECT_TIMEOUT_S`.
    """
    if _is_loopback(address):
        _one_machine_cluster()
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in ("auto", current):
            log.warning("this process is already connected to the Ray cluster at %s; running there, not at %s",
                        current, address)
        return ray
    if address != "auto":
        _check_reachable(address)
    quiet_ray_environment()
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=init, name="pollux-ray-connect", daemon=True)
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(_not_main_thread_notice)  # Ray's SIGTERM handler is for the main thread only
    try:
        thread.start()
        thread.join(CONNECT_TIMEOUT_S)
    finally:
        ray_worker_log.removeFilter(_not_main_thread_notice)
    if thread.is_alive():
        raise ExecutorError(f"no Ray cluster answered at {address!r} within {CONNECT_TIMEOUT_S:.0f} s")
    if failure:
        raise ExecutorError(f"cannot connect to the Ray cluster at {address!r}: {_root_cause(failure[0])}") from failure[0]
    return ray


def _root_cause(exc: BaseException) -> str:
    """Ray wraps the reason (e.g. a missing auth token) in "Failed to connect": show both, briefly."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [line for line in str(root).splitlines() if line.strip() and not line.startswith((" ", "Traceback"))]
    reason = lines[-1] if lines else type(root).__name__
    return str(exc) if root is exc else f"{exc} ({reason})"


class _ConsoleFilter(logging.Filter):
    """What of Ray Data's console log a user needs: its warnings (e.g. a worker that no node can
    fit). Not its info lines, not its errors (a failed run reaches the user as one ExecutorError;
    the full text stays in Ray Data's log file), not the notice that progress bars are off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno == logging.WARNING and "Progress bars disabled" not in record.getMessage()


def _quiet(data_context: Any) -> None:
    """Progress bars and per-run banners off: the stage's own progress bar is what a user reads."""
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    data_context.verbose_stats_logs = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console" and not any(isinstance(f, _ConsoleFilter) for f in handler.filters):
            handler.addFilter(_ConsoleFilter())


def _cause(exc: BaseException, died: tuple[type[BaseException], ...]) -> str:
    """The line a user needs from a Ray error: our own message if the chain carries one (Ray
    re-raises an actor's exception as a wrapper whose text holds the original), else the first line."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        if isinstance(seen, BatchFailed | WorkerBuildFailed):
            return str(seen)
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        found = _OUR_ERROR.findall(str(error))
        if found:
            return str(found[-1])
    text = str(exc).strip()
    first_line = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    if any(isinstance(error, died) for error in chain):
        return f"a worker process died running a batch and on each of its retries; last error: {first_line}"
    return first_line


def map_batches_ray(rows: Iterable[Row], make_worker: WorkerFactory, options: ExecutorOptions) -> Iterator[list[Row]]:
    """`pollux.executor.map_batches` on a Ray cluster (`options.ray`: "auto" or an address)."""
    assert options.ray is not None
    ray = connect(options.ray)  # at the call, before reading any input: a bad address fails fast
    _warn_if_no_node_fits(ray, options)
    items = [{_COLUMN: _encode(row)} for row in rows]
    if not items:
        return iter(())
    return _stream(ray, items, make_worker, options)


def _warn_if_no_node_fits(ray: Any, options: ExecutorOptions) -> None:
    """Ray waits, silently, for a node that can hold an actor; say so when none can now (e.g. GPUs
    asked of a CPU-only cluster). Not an error: an autoscaling cluster adds such nodes on demand."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(r.get("CPU", 0) >= options.cpus_per_worker and r.get("GPU", 0) >= options.gpus_per_worker
           for r in nodes):
        return
    log.warning(
        "no node of the Ray cluster has %s CPU(s) and %s GPU(s) for one worker now; the run waits until one "
        "joins (an autoscaling cluster adds it; otherwise stop and lower --cpus-per-worker/--gpus-per-worker)",
        options.cpus_per_worker, options.gpus_per_worker,
    )


def _encode(row: Row) -> str:
    try:
        return json.dumps(row, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ExecutorError(f"row {first_key([row])!r} cannot be sent to a Ray worker (rows must be JSON): {exc}") from exc


def _results(ray: Any, items: list[dict[str, str]], make_worker: WorkerFactory, options: ExecutorOptions) -> Any:
    """The lazy Ray Data pipeline: rows in blocks of about one batch → the actor pool → result rows."""
    blocks = min(-(-len(items) // options.batch_size), _MAX_BLOCKS)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    _quiet(ds.context)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote args given as keywords, but names no other way to bound the
        # retries of an actor's tasks after its process dies; Ray Data's default is to retry forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
        return ds.map_batches(
            _ActorWorker,
            fn_constructor_args=(make_worker, options.max_retries),
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            batch_size=options.batch_size,
            batch_format="pyarrow",
            max_restarts=-1,  # a dead actor process is replaced…
            max_task_retries=options.max_retries,  # …and its batches resubmitted, a bounded number of times
        )


def _stream(ray: Any, items: list[dict[str, str]], make_worker: WorkerFactory,
            options: ExecutorOptions) -> Iterator[list[Row]]:
    try:
        for batch in _results(ray, items, make_worker, options).iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [json.loads(text) for text in batch.column(_COLUMN).to_pylist()]
    except ExecutorError:
        raise
    except Exception as exc:
        died = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        raise ExecutorError(f"the Ray run failed: {_cause(exc, died)}") from exc
