"""The events a running task reports, and the one state enum every listener shares.

Operations (the engine, transfers) call these methods and know nothing about
who listens: the live display, periodic log lines, the Prometheus endpoint.
Every event names its task, and per-file events name the file, so listeners
never guess which task a file belongs to (tasks may run side by side).
Each listener subclasses :class:`TaskObserver` and overrides what it needs;
:class:`ObserverGroup` fans one call out to several listeners.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class TaskState(enum.StrEnum):
    """Where a task is. Extraction that overlaps the download stays TRANSFERRING."""

    STARTING = "starting"
    CONNECTING = "connecting"
    LISTING = "listing"
    TRANSFERRING = "transferring"
    EXTRACTING = "extracting"
    DONE = "done"
    FAILED = "failed"


ENDED_STATES = frozenset({TaskState.DONE, TaskState.FAILED})


class TaskObserver:
    """No-op base: override the events you care about. Must not raise or block."""

    def task_started(self, task: str) -> None:
        """A task began (before connecting)."""

    def state_changed(self, task: str, state: TaskState) -> None:
        """The task moved to another state."""

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        """The files to transfer are known."""

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        """A download begins; offset > 0 when it resumes a partial file."""

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        """count more bytes of remote_path were written to the destination."""

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        """A download was verified and moved to its final name."""

    def file_skipped(self, task: str, remote_path: str, reason: str) -> None:
        """A file was not fetched (already up to date, or not matched)."""

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        """A transient failure; the next try starts after delay seconds."""

    def error(self, task: str, message: str) -> None:
        """The task failed with this one-line message."""

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        """The task completed."""


class ObserverGroup(TaskObserver):
    """Forwards every event to each member observer, in order."""

    def __init__(self, observers: Iterable[TaskObserver] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: TaskObserver) -> None:
        self.observers.append(observer)

    def task_started(self, task: str) -> None:
        for observer in self.observers:
            observer.task_started(task)

    def state_changed(self, task: str, state: TaskState) -> None:
        for observer in self.observers:
            observer.state_changed(task, state)

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        for observer in self.observers:
            observer.plan_ready(task, total_files, total_bytes)

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        for observer in self.observers:
            observer.file_started(task, remote_path, size, offset)

    def bytes_received(self, task: str, remote_path: str, count: int) -> None:
        for observer in self.observers:
            observer.bytes_received(task, remote_path, count)

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        for observer in self.observers:
            observer.file_finished(task, remote_path, local_path, size)

    def file_skipped(self, task: str, remote_path: str, reason: str) -> None:
        for observer in self.observers:
            observer.file_skipped(task, remote_path, reason)

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        for observer in self.observers:
            observer.retrying(task, attempt, max_tries, delay, error)

    def error(self, task: str, message: str) -> None:
        for observer in self.observers:
            observer.error(task, message)

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        for observer in self.observers:
            observer.task_finished(task, files, total_bytes, seconds)
