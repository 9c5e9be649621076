"""Prometheus metrics of running tasks, served over HTTP while they run.

:class:`MetricsServer` listens to a task's events (see :mod:`._observer`) and
serves ``GET /metrics`` (Prometheus text format) and ``GET /healthz`` from a
background thread. Events arrive from the asyncio thread and scrapes from the
server's threads: one lock guards the state, and the metrics are computed from
it at scrape time by a custom collector registered in the server's own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one).

Metrics, each labelled by ``task``:

``dataferry_bytes_total`` / ``dataferry_bytes_done``
    Bytes planned, and bytes on disk so far (a resumed file counts its offset).
``dataferry_files_total`` / ``dataferry_files_done``
    Files planned, and files verified and in place.
``dataferry_retries_total`` / ``dataferry_errors_total``
    Retries after transient failures, and failures of the task.
``dataferry_rate_bytes_per_second``
    Receive rate over the last few seconds (0 once the task has ended).
``dataferry_state``
    One series per state, 1 for the current one (a Prometheus state set).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from .events import ENDED_STATES, TaskObserver, TaskState

STATES = tuple(state.value for state in TaskState)
RATE_WINDOW = 5.0
"""Seconds over which the current rate is averaged."""
_BUCKETS_PER_SECOND = 10

_StartResponse = Callable[..., Any]
_WSGIApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


@dataclass
class _TaskState:
    state: TaskState = TaskState.STARTING
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    retries: int = 0
    errors: int = 0
    file_progress: dict[str, int] = field(default_factory=dict)
    # (bucket index, bytes) with bucket = int(monotonic time * _BUCKETS_PER_SECOND)
    recent: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    rate_since: float | None = None

    @property
    def bytes_done(self) -> int:
        return sum(self.file_progress.values())


class _TaskMetrics(Collector):
    """The state of every task seen, turned into metric families at scrape time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.tasks: dict[str, _TaskState] = {}

    def task(self, name: str) -> _TaskState:
        """The state of task name; the caller holds the lock."""
        state = self.tasks.get(name)
        if state is None:
            state = self.tasks[name] = _TaskState()
        return state

    def rate(self, state: _TaskState, now: float) -> float:
        """Bytes per second over the last RATE_WINDOW seconds; the caller holds the lock."""
        if state.state in ENDED_STATES or state.rate_since is None:
            return 0.0
        oldest = int((now - RATE_WINDOW) * _BUCKETS_PER_SECOND)
        while state.recent and state.recent[0][0] <= oldest:
            state.recent.popleft()
        # Early in a transfer, average over the time it has been running.
        span = min(RATE_WINDOW, max(now - state.rate_since, 1.0 / _BUCKETS_PER_SECOND))
        return sum(count for _, count in state.recent) / span

    def collect(self) -> Iterator[Metric]:
        labels = ["task"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "bytes_total": GaugeMetricFamily(
                "dataferry_bytes_total", "Bytes planned for the task", labels=labels
            ),
            "bytes_done": GaugeMetricFamily(
                "dataferry_bytes_done", "Bytes of the task on disk so far", labels=labels
            ),
            "files_total": GaugeMetricFamily(
                "dataferry_files_total", "Files planned for the task", labels=labels
            ),
            "files_done": GaugeMetricFamily(
                "dataferry_files_done", "Files of the task verified and in place", labels=labels
            ),
            "retries": CounterMetricFamily(
                "dataferry_retries", "Retries after transient failures", labels=labels
            ),
            "errors": CounterMetricFamily(
                "dataferry_errors", "Failures of the task", labels=labels
            ),
            "rate": GaugeMetricFamily(
                "dataferry_rate_bytes_per_second",
                f"Receive rate over the last {RATE_WINDOW:g} seconds",
                labels=labels,
            ),
        }
        state_set = StateSetMetricFamily(
            "dataferry_state", "Current state of the task", labels=labels
        )
        with self.lock:
            now = self.clock()
            for name, task in sorted(self.tasks.items()):
                families["bytes_total"].add_metric([name], task.bytes_total)
                families["bytes_done"].add_metric([name], task.bytes_done)
                families["files_total"].add_metric([name], task.files_total)
                families["files_done"].add_metric([name], task.files_done)
                families["retries"].add_metric([name], task.retries)
                families["errors"].add_metric([name], task.errors)
                families["rate"].add_metric([name], self.rate(task, now))
                state_set.add_metric([name], {s: s == task.state for s in STATES})
        yield from families.values()
        yield state_set


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _IPv6ThreadingWSGIServer(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


class MetricsServer(TaskObserver):
    """Serves ``/metrics`` and ``/healthz`` for the tasks whose events it receives."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = _TaskMetrics(clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._metrics)
        self._httpd: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- HTTP ---------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Listen on host:port (port 0 picks a free one, see :attr:`port`) in a thread."""
        if self._httpd is not None:
            raise RuntimeError("metrics server already started")
        server_class = _IPv6ThreadingWSGIServer if ":" in host else _ThreadingWSGIServer
        self._httpd = make_server(
            host, port, self._app(), server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="dataferry-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port listened on (useful after ``start(port=0)``)."""
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        """Stop listening; a no-op when not started."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _app(self) -> _WSGIApp:
        metrics_app: _WSGIApp = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            if path == "/healthz":
                status, body = "200 OK", b"ok\n"
            else:
                status, body = "404 Not Found", b"not found: try /metrics or /healthz\n"
            start_response(
                status,
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]

        return app

    # --- events (from the asyncio thread) ----------------------------------------------

    def task_started(self, task: str) -> None:
        with self._metrics.lock:
            self._metrics.task(task).state = TaskState.STARTING

    def state_changed(self, task: str, state: TaskState) -> None:
        with self._metrics.lock:
            self._metrics.task(task).state = state

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        with self._metrics.lock:
            state = self._metrics.task(task)
            state.files_total = total_files
            state.bytes_total = total_bytes

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        m = self._metrics
        with m.lock:
            state = m.task(task)
            state.file_progress[remote_path] = offset
            if state.rate_since is None:
                state.rate_since = m.clock()

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        m = self._metrics
        with m.lock:
            state = m.task(task)
            state.file_progress[remote_path] = state.file_progress.get(remote_path, 0) + count
            now = m.clock()
            if state.rate_since is None:
                state.rate_since = now
            bucket = int(now * _BUCKETS_PER_SECOND)
            if state.recent and state.recent[-1][0] == bucket:
                state.recent[-1] = (bucket, state.recent[-1][1] + count)
            else:
                state.recent.append((bucket, count))

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        m = self._metrics
        with m.lock:
            state = m.task(task)
            state.file_progress[remote_path] = size
            state.files_done += 1

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        with self._metrics.lock:
            self._metrics.task(task).retries += 1

    def error(self, task: str, message: str) -> None:
        with self._metrics.lock:
            self._metrics.task(task).errors += 1

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        with self._metrics.lock:
            self._metrics.task(task).state = TaskState.DONE
