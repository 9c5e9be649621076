"""``dataferry run TASK | --all`` and the seed's ``task_N.py`` scripts.

Start-up overlaps the login: the TCP connection opens while asyncssh loads,
and the SSH login runs while a thread validates the config (see
:func:`_run_tasks`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..._connection import ConnectionSettings, resolve_connection
from ..._defaults import DEFAULT_CONFIG_FILE, LOG_LEVELS
from ..._exceptions import ConfigError, DataferryError
from ...observe import ObserverGroup, TaskObserver
from ...observe.progress import LogProgress, use_bars
from ...observe.units import format_bytes
from ...plan.names import shown
from ...sources.ssh.tcp import EarlyConnection
from .. import Terminated, configure_logging
from ..definition import overrides_from
from .dry_run import RunMode, dry_run

if TYPE_CHECKING:
    from ..._settings import ConfigFile, TaskSettings
    from ...engine import TaskReport
    from ...sources.ssh import SSHConnector

log = logging.getLogger("dataferry")


def run_seed_task(args: argparse.Namespace) -> int:
    def prepare() -> list[TaskSettings]:
        config = load_config(args.config_file, explicit=args.config_file is not None, default=None)
        return _resolve_tasks([args.task], config, overrides_from(args))

    return _run_tasks(prepare, mode=RunMode.of(args))


def load_config(path: Path | None, *, explicit: bool, default: Path | None) -> ConfigFile | None:
    from ..._settings import ConfigFile

    candidate = path or default
    if candidate is None:
        return None
    if not explicit and not candidate.exists():
        return None
    return ConfigFile.load(candidate)


def run_command(args: argparse.Namespace) -> int:
    def prepare() -> list[TaskSettings]:
        config = load_config(
            args.config, explicit=args.config is not None, default=DEFAULT_CONFIG_FILE
        )
        if not args.all:
            return _resolve_tasks([args.task], config, overrides_from(args))
        given = [
            key for key in ("file_save_path", "remote_file_path") if key in overrides_from(args)
        ]
        if given:
            raise ConfigError(
                f"--all runs every task of the config file: --{given[0]} would send them all "
                "to one path; name one task instead"
            )
        if config is None:
            raise ConfigError(f"--all needs a config file ({DEFAULT_CONFIG_FILE} not found)")
        if not config.tasks:
            raise ConfigError(f"{config.path}: --all: the file has no task sections")
        return _resolve_tasks(list(config.tasks), config, overrides_from(args))

    from ...cluster.command import cluster_requested, run_on_cluster

    if cluster_requested(args):
        return run_on_cluster(args, prepare)
    return _run_tasks(prepare, mode=RunMode.of(args))


def _resolve_tasks(
    names: list[str], config: ConfigFile | None, overrides: Mapping[str, object]
) -> list[TaskSettings]:
    from ..._settings import resolve_task
    from ...engine import run_task  # noqa: F401  (loads extraction too: here, off the critical path)

    return [resolve_task(name, config, overrides) for name in names]


def _run_tasks(
    prepare: Callable[[], list[TaskSettings]],
    resolve: Callable[[], ConnectionSettings] = resolve_connection,
    *,
    mode: RunMode | None = None,
) -> int:
    """Validate the tasks and run them, the connection already under way.

    Start-up and the login used to follow each other; now they overlap:
    1. the TCP connection opens in a thread (``EarlyConnection``) while
       asyncssh loads (~80 ms), so the server's greeting is waiting for it;
    2. the SSH login starts (the server works ~40 ms on loopback, several
       round trips on a far link) while a thread validates the config and
       loads pydantic and extraction (~70 ms).
    A config error still wins: it is reported, and the connection closed
    unused. Log records from before the log level is known are held, then
    shown or dropped by that level.
    """
    connection: ConnectionSettings | None = None
    connection_error: ConfigError | None = None
    try:
        connection = resolve()  # `get` resolves its own, from SOURCE
    except ConfigError as exc:
        connection_error = exc  # reported after the config's own errors, as before
    early = EarlyConnection.towards(connection) if connection else None
    from ...sources.ssh import SSHConnector  # asyncssh: loads while the TCP connection opens

    connector = SSHConnector(connection, early) if connection else None
    return asyncio.run(
        _until_terminated(_run_tasks_async(prepare, connector, connection_error, mode))
    )


async def _until_terminated(work: Coroutine[object, object, int]) -> int:
    """Run work; SIGTERM cancels it as Ctrl-C does (every file closed, partial files
    kept), then surfaces as Terminated (exit 143)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run_tasks_async(
    prepare: Callable[[], list[TaskSettings]],
    connector: SSHConnector | None,
    connection_error: ConfigError | None,
    mode: RunMode | None = None,
) -> int:
    held = _HeldRecords.install()
    mode = mode or RunMode()
    if connector is not None:
        connector.start()
    try:
        try:
            tasks = await asyncio.to_thread(prepare)
            if connection_error is not None:
                raise connection_error
        except BaseException:
            configure_logging("WARNING")  # e.g. "trusting new host ..." still shows
            held.replay()
            raise
        configure_logging(min(tasks, key=lambda task: LOG_LEVELS.index(task.log_level)).log_level)
        held.replay()
        from ...engine import run_task  # loaded by prepare's thread by now

        assert connector is not None  # the connection resolved: no error was raised
        failures: list[DataferryError] = []
        for settings in tasks:
            try:
                with task_observer(settings) as observer:
                    if mode.dry_run:
                        await dry_run(settings, connector, mode.observer(observer), mode)
                        continue
                    report = await run_task(settings, connector, mode.observer(observer))
            except DataferryError as exc:
                _name_task(exc, settings.name)
                if len(tasks) == 1:
                    raise
                print(f"dataferry: error: {exc}", file=sys.stderr)
                failures.append(exc)
                continue
            if mode.json is None:  # stdout is the JSON lines'
                _print_report(
                    report, list_paths=mode.list_paths, url=settings.destination_url
                )
        return failures[0].exit_code if failures else 0
    finally:
        if connector is not None:
            await connector.aclose()


def _name_task(exc: DataferryError, task: str) -> None:
    """Errors name their task: the engine's mostly do, the source's (a missing remote
    path, a refused host key) do not know it."""
    if exc.args and not str(exc).startswith(f"{task}:"):
        exc.args = (f"{task}: {exc}", *exc.args[1:])


class _HeldRecords(logging.Handler):
    """Log records kept until the log level is known (see _run_tasks_async)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @classmethod
    def install(cls) -> _HeldRecords:
        held = cls()
        root = logging.getLogger()
        root.addHandler(held)
        root.setLevel(logging.DEBUG)
        logging.getLogger("asyncssh").setLevel(logging.INFO)  # its DEBUG is per packet
        return held

    def replay(self) -> None:
        """Pass the held records to the configured handlers, if their level lets them through."""
        logging.getLogger().removeHandler(self)
        records, self.records = self.records, []
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


@contextlib.contextmanager
def task_observer(settings: TaskSettings) -> Iterator[TaskObserver]:
    """Progress bars or log lines, plus the metrics endpoint when asked for."""
    group = ObserverGroup()
    with contextlib.ExitStack() as stack:
        if use_bars(sys.stderr) and settings.log_level != "DEBUG":
            from ...observe.display import TaskDisplay

            # The display shows what the periodic progress lines would: no LogProgress.
            group.add(stack.enter_context(TaskDisplay(sys.stderr)))
        else:
            group.add(LogProgress())
        if settings.metrics_port:
            from ...observe.metrics import MetricsServer

            metrics = MetricsServer()
            try:
                metrics.start(host=settings.metrics_host, port=settings.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"{settings.name}: cannot serve metrics on "
                    f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror or exc}"
                ) from None
            stack.callback(metrics.stop)
            group.add(metrics)
        yield group


# A summary lists its paths up to this many files; beyond, only with --list.
LISTED_PATHS = 10


def _print_report(
    report: TaskReport, *, list_paths: bool = False, url: str | None = None
) -> None:
    """Counts, bytes, time and destination; every path with --list (or a few files).

    url: the task's destination when it is one (s3://...); the engine holds it
    as a path, which folds the "//".
    """
    from ...sinks import sink_url

    def label(path: Path) -> str:
        return shown(sink_url(url, path) if url is not None else str(path))

    skipped = f", {len(report.up_to_date)} already up to date" if report.up_to_date else ""
    where = f" in {label(report.folder)}" if report.folder is not None else ""
    print(
        f"{report.task}: {len(report.files)} file(s) ready{where}{skipped}, "
        f"{format_bytes(report.bytes_transferred)} transferred in {report.seconds:.1f} s"
    )
    if list_paths or len(report.files) <= LISTED_PATHS:
        for path in report.files:
            print(f"  {label(path)}")
    else:
        print(f"  (--list shows all {len(report.files)} paths)")
