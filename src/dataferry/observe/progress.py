"""Progress reporting off a terminal: periodic log lines (on one: observe/display.py)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from .events import TaskObserver
from .units import format_bytes

log = logging.getLogger("dataferry.progress")

LOG_INTERVAL = 5.0


def human_bytes(count: float) -> str:
    """The one size convention (observe/units.py); kept under its old name."""
    return format_bytes(count)


class _Totals:
    def __init__(self) -> None:
        self.total_bytes = 0
        self.done_bytes = 0
        self.started = time.monotonic()


class LogProgress(TaskObserver):
    """For containers and CI: one log line per task at most every few seconds."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.totals: dict[str, _Totals] = {}
        self.last_line = 0.0
        self.lock = threading.Lock()

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        totals = self.totals.setdefault(task, _Totals())
        totals.total_bytes = total_bytes
        log.info("%s: %d file(s), %s to fetch", task, total_files, human_bytes(total_bytes))
        self.last_line = time.monotonic()

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        totals = self.totals.setdefault(task, _Totals())
        totals.done_bytes += count
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            elapsed = max(now - totals.started, 1e-6)
            rate = totals.done_bytes / elapsed
            remaining = max(totals.total_bytes - totals.done_bytes, 0)
            eta = f", ETA {remaining / rate:.0f} s" if rate > 0 else ""
            percent = 100 * totals.done_bytes / totals.total_bytes if totals.total_bytes else 100
            log.info(
                "%s: %s of %s (%.0f%%), %s/s%s",
                task,
                human_bytes(totals.done_bytes),
                human_bytes(totals.total_bytes),
                percent,
                human_bytes(rate),
                eta,
            )

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        rate = total_bytes / seconds if seconds > 0 else 0.0
        log.info(
            "%s: done, %d file(s), %s transferred in %.1f s (%s/s)",
            task,
            files,
            human_bytes(total_bytes),
            seconds,
            human_bytes(rate),
        )


def use_bars(stream: TextIO = sys.stderr) -> bool:
    return stream.isatty()
