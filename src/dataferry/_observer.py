"""The hooks through which a running task reports what it does.

Operations (tasks, transfers) call these methods and know nothing about who
listens: a progress bar, periodic log lines, the Prometheus endpoint. Each
listener subclasses :class:`TaskObserver` and overrides what it needs;
:class:`ObserverGroup` fans one call out to several listeners.
"""

from __future__ import annotations

from collections.abc import Iterable


class TaskObserver:
    """No-op base: override the events you care about. Must not raise or block."""

    def task_started(self, task: str) -> None:
        """A task began (before connecting)."""

    def state_changed(self, task: str, state: str) -> None:
        """state is one of: connecting, listing, transferring, extracting, done, failed."""

    def plan_ready(self, task: str, total_files: int, total_bytes: int) -> None:
        """The files to transfer are known."""

    def file_started(self, remote_path: str, size: int, offset: int) -> None:
        """A download begins; offset > 0 when it resumes a partial file."""

    def bytes_received(self, remote_path: str, count: int) -> None:
        """count more bytes of remote_path were written locally."""

    def file_finished(self, remote_path: str, local_path: str, size: int) -> None:
        """A download was verified and moved to its final name."""

    def file_skipped(self, remote_path: str, reason: str) -> None:
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


def _make_forwarder(name: str):  # type: ignore[no-untyped-def]
    def forward(self: ObserverGroup, *args: object) -> None:
        for observer in self.observers:
            getattr(observer, name)(*args)

    forward.__name__ = name
    return forward


for _name in [n for n in vars(TaskObserver) if not n.startswith("_")]:
    setattr(ObserverGroup, _name, _make_forwarder(_name))
