"""``--json``: one JSON object per line on stdout for each event, for pipelines.

Events: ``fetched`` (a file verified and in place), ``skipped`` (with the
reason), ``retrying``, ``failed`` (the task's one-line error), ``summary`` (the
task's totals); ``--dry-run`` adds ``plan`` (a file it would fetch). Every
object names its ``event`` and ``task``. Names from the server are escaped by
JSON itself (``ensure_ascii``): a hostile name cannot break a line. Logs stay
on stderr.
"""

from __future__ import annotations

import json
import threading
from typing import Any, TextIO

from .events import TaskObserver


class JsonLines(TaskObserver):
    """Writes each event as one line of JSON to stream (stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()  # extraction threads may report too

    def emit(self, event: str, task: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "task": task, **fields}, ensure_ascii=True)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        self.emit("fetched", task, remote=remote_path, local=local_path, bytes=size)

    def file_skipped(self, task: str, remote_path: str, reason: str) -> None:
        self.emit("skipped", task, remote=remote_path, reason=reason)

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        self.emit("retrying", task, attempt=attempt, max_tries=max_tries, delay=delay, error=error)

    def error(self, task: str, message: str) -> None:
        self.emit("failed", task, error=message)

    def task_finished(self, task: str, files: int, total_bytes: int, seconds: float) -> None:
        self.emit("summary", task, files=files, bytes=total_bytes, seconds=round(seconds, 3))
