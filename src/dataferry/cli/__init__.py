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

from .. import __version__
from .._exceptions import DataferryError
from .._observer import ObserverGroup, TaskObserver
from .._progress import BarProgress, LogProgress, human_bytes, use_bars
from .._settings import (
    DEFAULT_CONFIG_FILE,
    LOG_LEVELS,
    ConfigFile,
    ConnectionSettings,
    TaskSettings,
    resolve_connection,
    resolve_task,
)
from .._tasks import TaskReport, run_task
from .definition import build_parser, build_seed_parser, overrides_from

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

    def run() -> int:
        config = _load_config(args.config_file, explicit=args.config_file is not None, default=None)
        return _run_tasks([args.task], config, overrides_from(args))

    return _exit_now(_report_errors(run), from_command_line=argv is None)


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
    candidate = path or default
    if candidate is None:
        return None
    if not explicit and not candidate.exists():
        return None
    return ConfigFile.load(candidate)


def _run_command(args: argparse.Namespace) -> int:
    config = _load_config(
        args.config, explicit=args.config is not None, default=DEFAULT_CONFIG_FILE
    )
    if args.all:
        if config is None:
            print(
                f"dataferry: error: --all needs a config file ({DEFAULT_CONFIG_FILE} not found)",
                file=sys.stderr,
            )
            return 2
        names = list(config.tasks)
    else:
        names = [args.task]
    return _run_tasks(names, config, overrides_from(args))


def _run_tasks(names: list[str], config: ConfigFile | None, overrides: Mapping[str, object]) -> int:
    # Validate everything before touching the network or the disk.
    tasks = [resolve_task(name, config, overrides) for name in names]
    configure_logging(min(tasks, key=lambda task: LOG_LEVELS.index(task.log_level)).log_level)
    connection = resolve_connection()
    failures: list[DataferryError] = []
    for settings in tasks:
        try:
            report = _run_one(settings, connection)
        except DataferryError as exc:
            if len(tasks) == 1:
                raise
            print(f"dataferry: error: {exc}", file=sys.stderr)
            failures.append(exc)
            continue
        _print_report(report)
    return failures[0].exit_code if failures else 0


def _run_one(settings: TaskSettings, connection: ConnectionSettings) -> TaskReport:
    with task_observer(settings) as observer:
        return asyncio.run(run_task(settings, connection, observer))


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


def _demo_command(args: argparse.Namespace) -> int:
    from .._demo import run_demo

    configure_logging("WARNING")
    return run_demo(args.config, size_bytes=args.size)


def _serve_command(args: argparse.Namespace) -> int:
    from .._server import serve

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
