"""``dataferry watch TASK [--every 60]``: poll a drop folder for good.

One connection is kept between polls (the connector reuses a session that
ended well) and made again when it drops. Each poll is a normal run of the
task: the manifest decides what is new or changed, the filters what is ready.
A failed poll (server away, network down, folder missing) is logged and
counted, and the next one waits longer (doubling, at most MAX_BACKOFF
seconds); errors no wait can fix (host key, authentication, config,
destination) end the watch with their exit code, so a compose service with
``restart: unless-stopped`` shows them. ``/healthz`` and ``/metrics`` are
served the whole time when metrics_port is set. SIGTERM or Ctrl-C stops it:
a poll in flight is cancelled the way a run is (partial files stay,
resumable; nothing half-written is recorded), then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..._connection import resolve_connection
from ..._defaults import DEFAULT_CONFIG_FILE
from ..._exceptions import RemotePathError, TransferError
from ...observe import ObserverGroup, TaskObserver
from .. import configure_logging
from ..definition import overrides_from
from .dry_run import RunMode
from .run import _resolve_tasks, load_config

if TYPE_CHECKING:
    from ..._settings import TaskSettings
    from ...sources.ssh import SSHConnector

log = logging.getLogger("dataferry")

MAX_BACKOFF = 300.0
# Errors a later poll may not see: the server away, the link down, the folder
# not there (yet). Anything else ends the watch.
POLL_AGAIN = (TransferError, RemotePathError)


@dataclass(eq=False)  # registered in a set by prometheus_client: hashed by identity
class WatchStats(TaskObserver, Collector):
    """Totals across polls, for /metrics (events from the loop, scrapes from threads)."""

    polls: int = 0
    poll_errors: int = 0
    files: int = 0
    bytes: int = 0
    last_success: float = 0.0  # epoch seconds of the last poll that ended well

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += size

    def poll_ended(self, ok: bool) -> None:
        with self.lock:
            self.polls += 1
            if ok:
                self.last_success = time.time()
            else:
                self.poll_errors += 1

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            values = (self.polls, self.poll_errors, self.files, self.bytes, self.last_success)
        polls, errors, files, fetched, last = values
        yield CounterMetricFamily("dataferry_watch_polls", "Polls of the watched task", polls)
        yield CounterMetricFamily("dataferry_watch_poll_errors", "Polls that failed", errors)
        yield CounterMetricFamily("dataferry_watch_files_fetched", "Files fetched", files)
        yield CounterMetricFamily("dataferry_watch_bytes_fetched", "Bytes fetched", fetched)
        yield GaugeMetricFamily(
            "dataferry_watch_last_success_timestamp_seconds",
            "When the last poll that ended well ended (epoch seconds; 0: none yet)",
            last,
        )


def watch_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, explicit=args.config is not None, default=DEFAULT_CONFIG_FILE)
    (settings,) = _resolve_tasks([args.task], config, overrides_from(args))
    connection = resolve_connection()
    configure_logging(settings.log_level)
    from ...sources.ssh import SSHConnector

    return asyncio.run(_watch(settings, SSHConnector(connection), args.every, RunMode.of(args)))


async def _watch(
    settings: TaskSettings, connector: SSHConnector, every: float, mode: RunMode
) -> int:
    from ...engine import run_task

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    stats = WatchStats()
    try:
        with _metrics(settings, stats) as observers:
            failures = 0
            log.info("%s: watching %s every %g s", settings.name, settings.remote_file_path, every)
            while not stopping.is_set():
                poll = asyncio.ensure_future(
                    run_task(settings, connector, mode.observer(ObserverGroup(observers)))
                )
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait([poll, stop], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not poll.done():
                    poll.cancel()  # partial files stay, resumable; nothing is recorded half-done
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await poll
                    break
                try:
                    report = poll.result()
                except POLL_AGAIN as exc:
                    failures += 1
                    stats.poll_ended(ok=False)
                    wait = min(every * 2**failures, max(every, MAX_BACKOFF))
                    log.warning(
                        "%s: poll failed: %s; next poll in %.0f s", settings.name, exc, wait
                    )
                else:
                    failures = 0
                    stats.poll_ended(ok=True)
                    wait = every
                    if report.downloaded:
                        log.info("%s: fetched %d file(s)", settings.name, len(report.downloaded))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await connector.aclose()
    print(f"dataferry: watch of {settings.name} stopped", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _metrics(settings: TaskSettings, stats: WatchStats) -> Iterator[list[TaskObserver]]:
    """The observers of every poll: log lines, the totals, and /metrics when asked for."""
    from ...observe.progress import LogProgress

    observers: list[TaskObserver] = [LogProgress(), stats]
    if not settings.metrics_port:
        yield observers
        return
    from ..._exceptions import ConfigError
    from ...observe.metrics import MetricsServer

    server = MetricsServer()
    server.registry.register(stats)
    try:
        server.start(host=settings.metrics_host, port=settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"{settings.name}: cannot serve metrics on "
            f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror or exc}"
        ) from None
    try:
        yield [*observers, server]
    finally:
        server.stop()
