"""The command line: the definition (definition.py), one module per command
(commands/), and the one place errors become exit codes (:func:`report_errors`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .. import __version__
from .._defaults import DEFAULT_CONFIG_FILE
from .._exceptions import DataferryError
from .definition import build_parser, build_seed_parser, command_parser

log = logging.getLogger("dataferry")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dataferry`` command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # shown with the usage of the command it was given to
        command = command_parser(parser, args.command) if args.command else None
        (command or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.version:
        print(f"dataferry {__version__}")
        return 0
    from .commands import COMMANDS, handler

    if args.command not in COMMANDS:
        parser.print_help()
        return 2
    return _finish(report_errors(lambda: handler(args.command)(args)))


def run_seed_script(task: str, script: str, argv: list[str] | None = None) -> int:
    """The seed's ``python src/task_N.py [--task T] [--config_file F] [flags]``."""
    from .commands.run import run_seed_task

    args = build_seed_parser(task).parse_args(argv)
    # The seed's container ran the scripts from inside src/ with config.json and
    # the data folder one level up; resolve relative paths from the project root.
    script_dir = Path(script).resolve().parent
    if Path.cwd() == script_dir and (script_dir.parent / DEFAULT_CONFIG_FILE).exists():
        os.chdir(script_dir.parent)
    return _finish(report_errors(lambda: run_seed_task(args)))


def _finish(code: int) -> int:
    """Flush what was printed; a reader that went away (``| head -1``) is no error."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            # Point stdout at /dev/null so the interpreter's own flush at exit is quiet.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return code


class Terminated(BaseException):
    """SIGTERM (docker stop, Kubernetes): unwinds like Ctrl-C, so partial files are kept."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def report_errors(action: Callable[[], int]) -> int:
    """Map every dataferry error to its exit code: one line on stderr, no traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return action()
    except Terminated:
        print(
            "dataferry: terminated; partial downloads are kept and resume on the next run",
            file=sys.stderr,
        )
        return 143
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
    except ModuleNotFoundError as exc:
        missing = _missing_dependency(exc)
        if missing is None:
            raise
        log.debug("missing dependency", exc_info=True)
        print(f"dataferry: error: {missing}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the details at DEBUG
        log.debug("unexpected failure", exc_info=True)
        print(
            f"dataferry: error: unexpected {type(exc).__name__}: {exc} "
            "(run with --log-level DEBUG for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """A package of requirements.txt missing: the wrong interpreter, not a bug.
    Names the one to use (e.g. ``python src/task_1.py`` with the system's python3)."""
    name = (exc.name or "").split(".")[0]
    if not name or name == "dataferry" or name in sys.stdlib_module_names:
        return None
    project = Path(__file__).resolve().parents[3]
    venv_python = project / ".venv" / "bin" / "python"
    if venv_python.exists():
        shown_venv = os.path.relpath(venv_python) if project == Path.cwd() else str(venv_python)
        use = f"run it with {shown_venv} (the project's interpreter)"
    else:
        use = "run `make demo` once (it creates .venv), then use .venv/bin/python"
    return (
        f"the Python package {name!r} is not installed for {sys.executable}; {use}, "
        "or pip install -r requirements.txt into this one"
    )


def configure_logging(level: str) -> None:
    debug = level == "DEBUG"
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else "%(levelname)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    # asyncssh at DEBUG prints every packet; its INFO is enough to follow a connection.
    logging.getLogger("asyncssh").setLevel(logging.INFO if debug else logging.WARNING)


__all__ = ["configure_logging", "main", "report_errors", "run_seed_script"]
