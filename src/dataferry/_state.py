"""What a destination already holds: the incremental state file and the per-task lock.

``.dataferry-state.json`` in a destination folder records, for each file a task
saved there, the remote file it came from (path, size, mtime) and what its
extraction produced. A re-run skips files whose remote is unchanged and whose
results are still on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ._exceptions import DestinationError
from ._ssh import RemoteFile

log = logging.getLogger("dataferry.state")

STATE_FILE = ".dataferry-state.json"
LOCK_WAIT_SECONDS = 600.0


def is_bookkeeping(name: str) -> bool:
    """Hidden files dataferry keeps beside the data (state, locks, partial downloads)."""
    return name.startswith(".") and "dataferry" in name


class DestinationState:
    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.records: dict[str, dict[str, Any]] = {}
        try:
            loaded = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # A damaged state file only costs a re-download; say so and carry on.
            log.warning("ignoring unreadable %s (%s): files will be fetched again", self.path, exc)
            return
        if isinstance(loaded, dict) and isinstance(loaded.get("files"), dict):
            self.records = loaded["files"]

    def up_to_date(self, local: Path, remote: RemoteFile, *, keep_archive: bool) -> bool:
        record = self.records.get(local.name)
        if not isinstance(record, dict):
            return False
        if keep_archive and not record.get("kept", True):
            return False
        if (record.get("remote_path"), record.get("size"), record.get("mtime")) != (
            remote.path,
            remote.size,
            remote.mtime,
        ):
            return False
        outputs = [local.parent / name for name in record.get("extracted", [])]
        if record.get("kept", True):
            try:
                held = local.stat()
            except OSError:
                return False
            if held.st_size != remote.size or int(held.st_mtime) != remote.mtime:
                return False
        return all(output.exists() for output in outputs)

    def record(self, local: Path, remote: RemoteFile, extracted: list[Path], kept: bool) -> None:
        self.records[local.name] = {
            "remote_path": remote.path,
            "size": remote.size,
            "mtime": remote.mtime,
            "kept": kept,
            "extracted": sorted(str(path.relative_to(local.parent)) for path in extracted),
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = json.dumps({"version": 1, "files": self.records}, indent=1, sort_keys=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".dataferry-state.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(document + "\n")
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


@contextlib.contextmanager
def task_lock(task: str, save_path: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One run at a time per destination: a second run waits, then gives up clearly."""
    lock_path = save_path.parent / f".{save_path.name}.dataferry.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create {lock_path.parent}: {exc.strerror}") from None
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning(
            "%s: another dataferry run is writing to %s; waiting up to %.0f s for it",
            task,
            save_path,
            wait,
        )
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise DestinationError(
                f"{task}: another dataferry run still holds {lock_path} after {wait:.0f} s; "
                "let it finish (or stop it) and run again"
            ) from None
    except OSError as exc:
        raise DestinationError(f"cannot lock {lock_path}: {exc.strerror}") from None
    try:
        yield
    finally:
        lock.release()
