"""Progress reporting: live bars on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from ..plan.names import shown
from .events import TaskObserver

if TYPE_CHECKING:
    from rich.progress import TaskID

log = logging.getLogger("dataferry.progress")

LOG_INTERVAL = 5.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


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


class BarProgress(TaskObserver):
    """For a terminal: a live bar per file being transferred (bytes, rate, ETA)."""

    def __init__(self, stream: TextIO) -> None:
        # Imported here: rich costs ~70 ms at start-up, wasted when stderr is no terminal.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.bars: dict[str, TaskID] = {}

    def __enter__(self) -> BarProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def _escape(self, text: str) -> str:
        from rich.markup import escape as rich_escape

        return rich_escape(text)

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        # rich would interpret [markup] in a name, a terminal its escape sequences.
        name = self._escape(shown(remote_path.rsplit("/", 1)[-1]))
        if remote_path in self.bars:
            self.progress.reset(self.bars[remote_path], total=size, completed=offset)
        else:
            self.bars[remote_path] = self.progress.add_task(name, total=size, completed=offset)

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        bar = self.bars.get(remote_path)
        if bar is not None:
            self.progress.advance(bar, count)

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        bar = self.bars.get(remote_path)
        if bar is not None:
            self.progress.update(bar, completed=size)
            # Many small files would flood the screen: keep only big ones.
            if size < 8 * 2**20:
                self.progress.update(bar, visible=False)


def use_bars(stream: TextIO = sys.stderr) -> bool:
    return stream.isatty()
