"""``dataferry run ... --scheduler ADDRESS | --workers N``: the command-line side.

Kept light (no Dask, no engine at import): ``dataferry run`` imports it to
ask whether a cluster was requested.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._defaults import LOG_LEVELS
from .._exceptions import ConfigError, DataferryError

if TYPE_CHECKING:
    from .._settings import TaskSettings

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
MAX_LOCAL_WORKERS = 256


def cluster_requested(args: argparse.Namespace) -> bool:
    return bool(
        getattr(args, "scheduler", None)
        or getattr(args, "workers", None) is not None
        or os.environ.get(SCHEDULER_ENV, "").strip()
    )


def _workers(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_LOCAL_WORKERS:
        raise ConfigError(
            f"--workers: expected a whole number from 1 to {MAX_LOCAL_WORKERS}, got {text!r}"
        )
    return count


def run_on_cluster(args: argparse.Namespace, prepare: Callable[[], list[TaskSettings]]) -> int:
    """Validate, then run each task sharded over the cluster; the exit code."""
    import contextlib

    from .._connection import resolve_connection
    from ..cli import configure_logging
    from ..cli.commands.run import _print_report, task_observer

    workers = _workers(getattr(args, "workers", None))
    scheduler = getattr(args, "scheduler", None) or None
    if scheduler and workers is not None:
        raise ConfigError("--scheduler and --workers: give one (a cluster, or a local one)")
    if scheduler is None and workers is None:
        scheduler = os.environ.get(SCHEDULER_ENV, "").strip() or None
    tasks = prepare()
    connection = resolve_connection()
    configure_logging(min(tasks, key=lambda task: LOG_LEVELS.index(task.log_level)).log_level)
    from .coordinator import dask_client, run_tasks_on_cluster

    failures: list[DataferryError] = []
    with contextlib.ExitStack() as stack:
        # One task: the usual display (or progress lines), fed shard by shard. Tasks
        # running at once keep to the per-shard log lines (the display shows one task).
        observer = stack.enter_context(task_observer(tasks[0])) if len(tasks) == 1 else None
        client = stack.enter_context(dask_client(scheduler, workers))
        outcomes = run_tasks_on_cluster(client, tasks, connection, observer)
    for settings, outcome in zip(tasks, outcomes, strict=True):
        if isinstance(outcome, DataferryError):
            if len(tasks) == 1:
                raise outcome
            print(f"dataferry: error: {outcome}", file=sys.stderr)
            failures.append(outcome)
        else:
            _print_report(
                outcome, list_paths=bool(getattr(args, "list", False)), url=settings.destination_url
            )
    return failures[0].exit_code if failures else 0
