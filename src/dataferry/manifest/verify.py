"""Compare what a task's manifest record says with the files on disk.

Only complete entries are checked (an incomplete one is an intent record: its
results may never have been moved into place), and only their results: an
archive kept beside them is checked only when it is also listed as a result.
A result that is a symbolic link is checked by the file it points to.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .model import ResultRecord, TaskRecord

MISSING = "missing"
NOT_A_FILE = "not a regular file"
CONTENT_CHANGED = "content changed (sha256 differs)"


class NotRegularFileError(OSError):
    """The path is a folder, device, FIFO or socket, not a regular file."""


@dataclass(frozen=True)
class Drift:
    """A recorded result that is no longer as recorded."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _open_regular(path: Path) -> int:
    """A read descriptor on ``path``, which must be a regular file.

    O_NONBLOCK keeps a FIFO put in a result's place from hanging us; it is
    cleared again (regular files ignore it anyway).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"{path}: {NOT_A_FILE}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file's content, as 64 lowercase hex digits."""
    with os.fdopen(_open_regular(path), "rb", buffering=0) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def record_result(destination: Path, relative_path: str) -> ResultRecord:
    """Describe ``destination / relative_path`` (size, mtime, sha256) for the manifest."""
    path = destination / relative_path
    with os.fdopen(_open_regular(path), "rb", buffering=0) as handle:
        status = os.fstat(handle.fileno())
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return ResultRecord(relative_path, status.st_size, int(status.st_mtime), digest)


def destination_label(folder: Path, manifest: Path) -> str:
    """How a destination folder is recorded: relative to the manifest's folder when
    it lies inside it (a manifest committed with the data stays valid on any
    machine), else absolute."""
    target = Path(os.path.abspath(folder))
    base = Path(os.path.abspath(manifest)).parent
    try:
        relative = target.relative_to(base)
    except ValueError:
        return str(target)
    return relative.as_posix() or "."


def destination_folder(record: TaskRecord, base: Path) -> Path:
    """The task's destination: absolute as recorded, or relative to ``base`` (the
    manifest's folder)."""
    return base / record.destination


def _check(path: Path, result: ResultRecord, rehash: bool) -> str | None:
    try:
        fd = _open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except NotRegularFileError:
        return NOT_A_FILE
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    with os.fdopen(fd, "rb", buffering=0) as handle:
        status = os.fstat(fd)
        if status.st_size != result.size:
            return f"size changed (recorded {result.size} bytes, found {status.st_size})"
        if rehash:
            try:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as exc:
                return f"unreadable ({exc.strerror or exc})"
            return None if digest == result.sha256 else CONTENT_CHANGED
        if int(status.st_mtime) != result.mtime:
            return (
                f"modified (same size, but mtime {int(status.st_mtime)} differs from recorded "
                f"{result.mtime}; rehash to check the content)"
            )
    return None


def verify_task(record: TaskRecord, base: Path, *, rehash: bool = True) -> list[Drift]:
    """Every result of ``record``'s complete entries that is missing or changed, by path.

    With ``rehash`` (the default) a file of the recorded size is hashed and
    compared with the recorded sha256; its mtime is not looked at, so a file
    only touched is not drift.  Without it, a size or mtime change is drift
    and the content is not read.
    """
    folder = destination_folder(record, base)
    drifts: list[Drift] = []
    for entry in record.entries.values():
        if not entry.complete:
            continue
        for result in entry.results:
            path = folder / result.path
            problem = _check(path, result, rehash)
            if problem is not None:
                drifts.append(Drift(path, problem))
    return sorted(drifts, key=lambda drift: str(drift.path))
