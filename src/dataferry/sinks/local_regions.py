"""A local part file written in regions by several connections (segmented downloads).

The same part file and side file as a sequential download (``sinks/local.py``),
but the part is as long as the remote file from the start (sparse) and each
segment writes into its own region with ``os.pwrite``. The side file records,
beside the source (path, size, mtime), each segment and the bytes it holds::

    {"remote_path": ..., "size": ..., "mtime": ..., "segments": [[start, end, done], ...]}

``done`` is recorded only after an fdatasync of the part file, so a run killed
at any moment resumes each segment where its durable bytes end. A sequential
download finding such a side file resumes from the first segment's bytes only
(the one prefix known to be good; see ``LocalPartWriter._resume_offset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path

from .._exceptions import TransientError
from ..sources import RemoteFile
from .base import RegionWriter
from .local import (
    _DISK_ERRNOS,
    _open_nofollow,
    _read_meta,
    destination_error,
    part_meta_path,
    part_path,
)


def recorded_segments(recorded: object, remote: RemoteFile) -> list[tuple[int, int, int]] | None:
    """The segments a side file records for this very source, None when it records none
    (or another source, or nonsense: then nothing held is trusted)."""
    if not isinstance(recorded, dict):
        return None
    if (recorded.get("remote_path"), recorded.get("size"), recorded.get("mtime")) != (
        remote.path,
        remote.size,
        remote.mtime,
    ):
        return None
    raw = recorded.get("segments")
    if not isinstance(raw, list) or not raw:
        return None
    segments: list[tuple[int, int, int]] = []
    position = 0
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            return None
        start, end, done = item
        # Contiguous, in order, covering the file exactly; done within its segment.
        if start != position or end <= start or not 0 <= done <= end - start:
            return None
        segments.append((start, end, done))
        position = end
    if position != remote.size:
        return None
    return segments


def first_segment_prefix(recorded: object, remote: RemoteFile) -> int | None:
    """For a sequential resume: bytes held from offset 0 (None: not a segmented side file)."""
    if not isinstance(recorded, dict) or "segments" not in recorded:
        return None
    segments = recorded_segments(recorded, remote)
    return segments[0][2] if segments else 0


def _write_state(meta: Path, remote: RemoteFile, segments: list[tuple[int, int, int]]) -> None:
    record = {
        "remote_path": remote.path,
        "size": remote.size,
        "mtime": remote.mtime,
        "segments": [list(segment) for segment in segments],
    }
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(meta).st_mode):
            os.unlink(meta)  # a planted link or other oddity: never write through it
    fd = _open_nofollow(meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record) + "\n")


class LocalRegionWriter(RegionWriter):
    def __init__(self, final: Path, remote: RemoteFile, segments: list[tuple[int, int]]) -> None:
        self.final = final
        self.remote = remote
        self.part = part_path(final)
        self.meta = part_meta_path(final)
        self.segments = list(segments)
        self.held = [0] * len(segments)
        self._fd = -1
        self._written = 0  # bytes written by this writer (to check the total at commit)

    def open(self) -> None:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            recorded = recorded_segments(_read_meta(self.meta), self.remote)
            try:
                held = os.lstat(self.part)
                part_ok = stat.S_ISREG(held.st_mode) and held.st_size == self.remote.size
            except FileNotFoundError:
                part_ok = False
            if not part_ok:
                with contextlib.suppress(FileNotFoundError):
                    if not stat.S_ISREG(os.lstat(self.part).st_mode):
                        os.unlink(self.part)
            if recorded is not None and part_ok:
                self.segments = [(start, end) for start, end, _ in recorded]
                self.held = [done for _, _, done in recorded]
            self._fd = _open_nofollow(self.part, os.O_RDWR | os.O_CREAT)
            if not any(self.held):
                # A fresh start: an empty file of the final length (sparse).
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, self.remote.size)
                _write_state(self.meta, self.remote, self._state(self.held))
        except OSError as exc:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise destination_error(self.final.parent, exc) from None

    def _state(self, done: list[int]) -> list[tuple[int, int, int]]:
        return [(start, end, d) for (start, end), d in zip(self.segments, done, strict=True)]

    async def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                if written == 0:
                    raise OSError(28, "no space left on device")
                offset += written
                self._written += written
                view = view[written:]
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> Exception:
        if exc.errno in _DISK_ERRNOS:
            return destination_error(self.part, exc)
        return exc

    async def checkpoint(self, done: list[int]) -> None:
        snapshot = list(done)  # taken before the sync: never claims more than is durable
        try:
            await asyncio.to_thread(os.fdatasync, self._fd)
            await asyncio.to_thread(_write_state, self.meta, self.remote, self._state(snapshot))
        except OSError as exc:
            raise self._error(exc) from None

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    async def commit(self, mtime: int) -> str:
        try:
            os.utime(self._fd, (mtime, mtime))
            await asyncio.to_thread(os.fsync, self._fd)
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            self._close_fd()
        if size != self.remote.size:
            raise TransientError(f"{self.remote.path}: got {size} of {self.remote.size} bytes")
        try:
            os.replace(self.part, self.final)
            self.meta.unlink(missing_ok=True)
        except OSError as exc:
            raise destination_error(self.final, exc) from None
        return str(self.final)

    async def close(self, done: list[int]) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                await self.checkpoint(done)
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self._close_fd()
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
