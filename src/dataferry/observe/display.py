"""The terminal display: one overall line per task, a few lines for the largest files.

Events only update counters (a dict entry and a few integers per file); a
timer thread of rich's ``Live`` draws them a few times a second. One live bar
per file (the previous design) cost 20x the transfer itself with 2000 small
files: each event went through rich's locks and every redraw walked every bar.

Log records go through the same console while the display lives, so they print
above it and never into its lines; the last drawing (the final state) stays on
the screen when it stops.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from ..plan.names import shown
from .events import TaskObserver, TaskState
from .units import format_bytes, format_rate

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.live import Live

# Lines for files in flight, the largest first; smaller files only count.
MAX_FILE_LINES = 3
FILE_LINE_MIN_BYTES = 1_000_000
REFRESH_PER_SECOND = 4
# The rate shown is measured over this window (seconds), the ETA from it.
RATE_WINDOW = 5.0
BAR_WIDTH = 30
# On a narrow terminal the bars shrink first, so the numbers (ETA last) stay whole.
MIN_BAR_WIDTH = 8
TEXT_WIDTH = 80


@dataclass
class _InFlight:
    name: str
    size: int
    done: int


class _State:
    """Counters the events update and the drawing reads (no lock: a stale read only
    draws a value from a moment earlier)."""

    def __init__(self) -> None:
        self.task = ""
        self.state = TaskState.STARTING
        self.total_files = 0
        self.total_bytes = 0
        self.files_done = 0
        self.bytes_done = 0  # of total_bytes: resumed prefixes count
        self.received = 0  # over the wire in this run: the rate
        self.up_to_date = 0
        self.planned = False
        self.in_flight: dict[str, _InFlight] = {}
        self.started = time.monotonic()
        self.transfer_started: float | None = None
        self.finished_after: float | None = None
        self.note = ""


class TaskDisplay(TaskObserver):
    """For a terminal: ``with TaskDisplay(sys.stderr): run the task``."""

    def __init__(
        self,
        stream: TextIO,
        *,
        max_file_lines: int = MAX_FILE_LINES,
        refresh_per_second: float = REFRESH_PER_SECOND,
    ) -> None:
        # Imported here: rich costs ~70 ms at start-up, wasted when stderr is no terminal.
        from rich.console import Console
        from rich.live import Live

        self.stream = stream
        self.max_file_lines = max_file_lines
        self.state = _State()
        self.console: Console = Console(file=stream)
        self.live: Live = Live(
            _Drawing(self.state, max_file_lines),
            console=self.console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self._rerouted: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    # ------------------------------------------------------------------ lifetime

    def __enter__(self) -> TaskDisplay:
        self.live.start()
        self._reroute_logging()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.live.stop()  # draws the final state once more, and leaves it
        finally:
            self._restore_logging()

    def _reroute_logging(self) -> None:
        """Handlers writing to our terminal print through the console instead."""
        writer = _ConsoleLines(self.console)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and _same_stream(
                handler.stream, self.stream
            ):
                previous = handler.setStream(writer)
                if previous is not None:
                    self._rerouted.append((handler, previous))

    def _restore_logging(self) -> None:
        for handler, previous in self._rerouted:
            handler.setStream(previous)
        self._rerouted.clear()

    # ------------------------------------------------------------------ events

    def task_started(self, task: str) -> None:
        self.state.task = task
        self.state.started = time.monotonic()

    def state_changed(self, task: str, state: TaskState) -> None:
        self.state.state = state
        if state is TaskState.TRANSFERRING:
            self.state.note = ""
            if self.state.transfer_started is None:
                self.state.transfer_started = time.monotonic()

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        self.state.total_files = total_files
        self.state.total_bytes = total_bytes
        self.state.planned = True

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        state = self.state
        previous = state.in_flight.get(remote_path)
        if previous is not None:  # a new try of the same file: count from its offset
            state.bytes_done -= previous.done
        name = shown(remote_path.rsplit("/", 1)[-1])
        state.in_flight[remote_path] = _InFlight(name, size, offset)
        state.bytes_done += offset

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        state = self.state
        state.received += count
        state.bytes_done += count
        file = state.in_flight.get(remote_path)
        if file is not None:
            file.done += count

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        state = self.state
        file = state.in_flight.pop(remote_path, None)
        state.bytes_done += size - (file.done if file is not None else size)
        state.files_done += 1

    def file_skipped(self, task: str, remote_path: str, reason: str) -> None:
        self.state.up_to_date += 1

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        self.state.note = f"try {attempt + 1} of {max_tries} in {delay:.1f} s"

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        self.state.in_flight.clear()
        self.state.finished_after = seconds


class _Drawing:
    """What the live display draws, computed from the counters at each refresh."""

    def __init__(self, state: _State, max_file_lines: int) -> None:
        self.state = state
        self.max_file_lines = max_file_lines
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.lock = threading.Lock()  # rich may draw from its thread and on stop

    def rate(self, now: float) -> float:
        """Bytes per second over the last RATE_WINDOW seconds."""
        with self.lock:
            samples = self.samples
            samples.append((now, self.state.received))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
                samples.popleft()
            then, received_then = samples[0]
        if now - then < 0.2:
            return 0.0
        return (self.state.received - received_then) / (now - then)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def render(self, width: int = 120) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        state, now = self.state, time.monotonic()
        bar_width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, width - TEXT_WIDTH))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, overflow="ellipsis", max_width=min(40, max(12, width // 4)))
        grid.add_column(width=bar_width, no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        total = max(state.total_bytes, 1)
        done = state.total_bytes if state.finished_after is not None else state.bytes_done
        bar = ProgressBar(total=total, completed=min(done, total), width=bar_width)
        grid.add_row(Text(state.task, style="bold"), bar, Text(self._overall(now)))
        largest = sorted(state.in_flight.values(), key=lambda f: f.size, reverse=True)
        for file in largest[: self.max_file_lines]:
            if file.size < FILE_LINE_MIN_BYTES:
                break
            grid.add_row(
                Text("  " + file.name),
                ProgressBar(total=file.size, completed=min(file.done, file.size), width=bar_width),
                Text(f"{format_bytes(file.done)} of {format_bytes(file.size)}"),
            )
        return Group(grid)

    def _overall(self, now: float) -> str:
        state = self.state
        skipped = f", {state.up_to_date} up to date" if state.up_to_date else ""
        if state.finished_after is not None:
            seconds = max(state.finished_after, 1e-6)
            return (
                f"done: {state.files_done} file(s){skipped}, "
                f"{format_bytes(state.received)} in {state.finished_after:.1f} s "
                f"({format_rate(state.received / seconds)})"
            )
        if state.state is TaskState.FAILED:
            return f"failed after {state.files_done} of {state.total_files} file(s)"
        if not state.planned:
            note = f" ({state.note})" if state.note else ""
            return f"{state.state.value}…{note}"
        rate = self.rate(now)
        remaining = max(state.total_bytes - state.bytes_done, 0)
        eta = f", ETA {_clock(remaining / rate)}" if rate > 0 and remaining else ""
        note = f" ({state.note})" if state.note else ""
        extracting = ", extracting" if state.state is TaskState.EXTRACTING else ""
        return (
            f"{state.files_done}/{state.total_files} files, "
            f"{format_bytes(state.bytes_done)} of {format_bytes(state.total_bytes)}, "
            f"{format_rate(rate)}{eta}{skipped}{extracting}{note}"
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _ConsoleLines(io.TextIOBase):
    """A stream for logging handlers: each complete line printed through the console,
    which puts it above the live display."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.pending = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            if "\n" not in self.pending:
                return len(text)
            complete, self.pending = self.pending.rsplit("\n", 1)
        for line in complete.split("\n"):
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


def _same_stream(stream: object, target: TextIO) -> bool:
    if stream is target:
        return True
    try:
        return stream.fileno() == target.fileno()  # type: ignore[attr-defined, no-any-return]
    except (AttributeError, OSError, ValueError):
        return False


__all__ = ["TaskDisplay"]
