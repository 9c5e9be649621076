"""The command line: thin handlers over the package, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .._connection import ConnectionSettings, resolve_connection
from .._defaults import DEFAULT_CONFIG_FILE, LOG_LEVELS
from .._exceptions import ConfigError, DataferryError
from .._observer import ObserverGroup, TaskObserver
from .._progress import BarProgress, LogProgress, human_bytes, use_bars
from .._tcp import EarlyConnection
from .definition import build_parser, build_seed_parser, overrides_from

if TYPE_CHECKING:
    from .._settings import ConfigFile, TaskSettings
    from .._ssh import Connector
    from .._tasks import TaskReport

log = logging.getLogger("dataferry")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dataferry`` command."""
    return _exit_now(_main(argv), from_command_line=argv is None)


def _exit_now(code: int, *, from_command_line: bool) -> int:
    """From the command line, leave without tearing the interpreter down.

    The teardown (module cleanup, idle worker threads) took ~80 ms here, a
    tenth of fetching and extracting a 68 MB archive. By now every file is
    closed, fsynced and renamed, and no work is left running.
    """
    if from_command_line:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # e.g. `dataferry ... | head -1`
                stream.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"dataferry {__version__}")
        return 0
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run_command,
        "demo": _demo_command,
        "serve": _serve_command,
    }
    if args.command not in handlers:
        parser.print_help()
        return 2
    return _report_errors(lambda: handlers[args.command](args))


def run_seed_script(task: str, script: str, argv: list[str] | None = None) -> int:
    """The seed's ``python src/task_N.py [--task T] [--config_file F] [flags]``."""
    args = build_seed_parser(task).parse_args(argv)
    # The seed's container ran the scripts from inside src/ with config.json and
    # the data folder one level up; resolve relative paths from the project root.
    script_dir = Path(script).resolve().parent
    if Path.cwd() == script_dir and (script_dir.parent / DEFAULT_CONFIG_FILE).exists():
        os.chdir(script_dir.parent)

    def prepare() -> list[TaskSettings]:
        config = _load_config(args.config_file, explicit=args.config_file is not None, default=None)
        return _resolve_tasks([args.task], config, overrides_from(args))

    return _exit_now(_report_errors(lambda: _run_tasks(prepare)), from_command_line=argv is None)


def _report_errors(action: Callable[[], int]) -> int:
    """Map every dataferry error to its exit code: one line on stderr, no traceback."""
    try:
        return action()
    except DataferryError as exc:
        log.debug("failure", exc_info=True)
        print(f"dataferry: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "dataferry: interrupted; partial downloads are kept and resume on the next run",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:  # a bug: still one line, the details at DEBUG
        log.debug("unexpected failure", exc_info=True)
        print(
            f"dataferry: error: unexpected {type(exc).__name__}: {exc} "
            "(run with --log-level DEBUG for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def _load_config(path: Path | None, *, explicit: bool, default: Path | None) -> ConfigFile | None:
    from .._settings import ConfigFile

    candidate = path or default
    if candidate is None:
        return None
    if not explicit and not candidate.exists():
        return None
    return ConfigFile.load(candidate)


def _run_command(args: argparse.Namespace) -> int:
    def prepare() -> list[TaskSettings]:
        config = _load_config(
            args.config, explicit=args.config is not None, default=DEFAULT_CONFIG_FILE
        )
        if not args.all:
            return _resolve_tasks([args.task], config, overrides_from(args))
        if config is None:
            raise ConfigError(f"--all needs a config file ({DEFAULT_CONFIG_FILE} not found)")
        if not config.tasks:
            raise ConfigError(f"{config.path}: --all: the file has no task sections")
        return _resolve_tasks(list(config.tasks), config, overrides_from(args))

    return _run_tasks(prepare)


def _resolve_tasks(
    names: list[str], config: ConfigFile | None, overrides: Mapping[str, object]
) -> list[TaskSettings]:
    from .._settings import resolve_task
    from .._tasks import run_task  # noqa: F401  (loads extraction too: here, off the critical path)

    return [resolve_task(name, config, overrides) for name in names]


def _run_tasks(prepare: Callable[[], list[TaskSettings]]) -> int:
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
        connection = resolve_connection()
    except ConfigError as exc:
        connection_error = exc  # reported after the config's own errors, as before
    early = EarlyConnection(connection.host, connection.port) if connection else None
    from .._ssh import Connector  # asyncssh: loads while the TCP connection opens

    connector = Connector(connection, early) if connection else None
    return asyncio.run(_run_tasks_async(prepare, connector, connection_error))


async def _run_tasks_async(
    prepare: Callable[[], list[TaskSettings]],
    connector: Connector | None,
    connection_error: ConfigError | None,
) -> int:
    held = _HeldRecords.install()
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
        from .._tasks import run_task  # loaded by prepare's thread by now

        assert connector is not None  # the connection resolved: no error was raised
        failures: list[DataferryError] = []
        for settings in tasks:
            try:
                with task_observer(settings) as observer:
                    report = await run_task(settings, connector, observer)
            except DataferryError as exc:
                if len(tasks) == 1:
                    raise
                print(f"dataferry: error: {exc}", file=sys.stderr)
                failures.append(exc)
                continue
            _print_report(report)
        return failures[0].exit_code if failures else 0
    finally:
        if connector is not None:
            await connector.aclose()


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
            group.add(stack.enter_context(BarProgress(sys.stderr)))
        group.add(LogProgress())
        if settings.metrics_port:
            from .._metrics import MetricsServer

            metrics = MetricsServer()
            metrics.start(port=settings.metrics_port)
            stack.callback(metrics.stop)
            group.add(metrics)
        yield group


def _print_report(report: TaskReport) -> None:
    skipped = f", {len(report.up_to_date)} already up to date" if report.up_to_date else ""
    print(
        f"{report.task}: {len(report.files)} file(s) ready{skipped}, "
        f"{human_bytes(report.bytes_transferred)} transferred in {report.seconds:.1f} s"
    )
    for path in report.files:
        print(f"  {path}")


def configure_logging(level: str) -> None:
    debug = level == "DEBUG"
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else "%(levelname)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    # asyncssh at DEBUG prints every packet; its INFO is enough to follow a connection.
    logging.getLogger("asyncssh").setLevel(logging.INFO if debug else logging.WARNING)


# Dockerfile.prod builds the package without dataferry.devserver.
DEVSERVER_MISSING = (
    "the development server is not part of this installation (production image); "
    "use the development image or pip install dataferry"
)


def _devserver_missing(exc: ModuleNotFoundError) -> None:
    """Turn "dataferry.devserver is not installed" into a one-line error (exit 2).

    Any other missing module is a real bug and is left to propagate.
    """
    if exc.name == "dataferry.devserver" or (exc.name or "").startswith("dataferry.devserver."):
        raise ConfigError(DEVSERVER_MISSING) from None


def _demo_command(args: argparse.Namespace) -> int:
    try:
        from ..devserver import run_demo
    except ModuleNotFoundError as exc:
        _devserver_missing(exc)
        raise

    configure_logging("WARNING")
    return run_demo(args.config, size_bytes=args.size)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        from ..devserver import serve
    except ModuleNotFoundError as exc:
        _devserver_missing(exc)
        raise

    configure_logging("INFO")
    serve(
        args.directory,
        host=args.host,
        port=args.port,
        username=args.username,
        password=os.environ.get("DATAFERRY_SERVE_PASSWORD") or None,
        known_hosts_out=args.known_hosts_out,
        env_out=args.env_out,
        sample_size=args.sample,
    )
    return 0
