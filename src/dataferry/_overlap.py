"""Extract an archive while it downloads.

Decompression is the next wall after the network, so an archive's extraction
runs in a thread while its bytes arrive. :class:`GrowingFile` is the
extractor's view of the partial file the download writes (always a clean prefix):
a read waits until the download has written the bytes it needs. A zip's
central directory sits at the end, so it is fetched first and served from
memory; the members are then inflated as the download passes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from ._downloads import part_path
from ._exceptions import OverwriteConflictError
from ._ssh import RemoteFile, RemoteHandle, read_range
from .extract import (
    ArchiveKind,
    ExtractLimits,
    detect_archive_kind_of,
    extract_tar_stream,
    extract_zip_stream,
)

log = logging.getLogger("dataferry.overlap")

# Fetched before the download to recognise the archive (and a zip's directory).
HEAD_BYTES = 64 * 1024
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_MAGIC = b"PK\x05\x06"
_MAX_TAIL = 64 * 2**20


class DownloadAborted(Exception):
    """The download feeding a GrowingFile failed; the extraction must stop."""


def zip_tail_start(size: int, end: bytes) -> int | None:
    """Where a zip's central directory starts, from the last bytes of the file.

    None when it cannot be told cheaply (zip64, comments hiding the record, a
    directory too large to hold in memory): the zip is then extracted after
    the download instead.
    """
    position = end.rfind(_EOCD_MAGIC)
    if position < 0 or len(end) - position < _EOCD.size:
        return None
    fields = _EOCD.unpack_from(end, position)
    directory_size, directory_offset = int(fields[5]), int(fields[6])
    if 0xFFFFFFFF in (directory_size, directory_offset):
        return None
    start = size - len(end) + position - directory_size
    if start < 0 or size - start > _MAX_TAIL:
        return None
    return min(start, size - len(end))


class GrowingFile(io.RawIOBase):
    """A seekable, read-only view of a file that is being written in order."""

    def __init__(self, path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._size = size
        # Bytes fetched before the download (its first and, for a zip, last bytes)
        # are served from memory, so the extractor can start at once.
        self._head = head
        self._tail = tail
        self._tail_start = size - len(tail)
        self._written = 0
        self._failure: str | None = None
        self._position = 0
        self._changed = threading.Condition()
        self.name = path.name

    # -- the download's side (event-loop thread)

    def advance(self, written: int) -> None:
        with self._changed:
            self._written = written
            self._changed.notify_all()

    def abort(self, reason: str) -> None:
        with self._changed:
            self._failure = reason
            self._changed.notify_all()

    # -- the extractor's side

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        start = self._position
        end = min(start + len(view), self._size)
        if end <= start:
            return 0
        if start >= self._tail_start:
            data = self._tail[start - self._tail_start : end - self._tail_start]
        elif end <= len(self._head):
            data = self._head[start:end]
        else:
            end = min(end, self._tail_start)
            self._wait_for(end)
            data = os.pread(self._fd, end - start, start)
        view[: len(data)] = data
        self._position = start + len(data)
        return len(data)

    def _wait_for(self, offset: int) -> None:
        with self._changed:
            while self._written < offset:
                if self._failure is not None:
                    raise DownloadAborted(self._failure)
                self._changed.wait()

    def close(self) -> None:
        # Both threads may close (the extractor's reader when it is done, the
        # task when the download ends): the fd must be closed exactly once, or a
        # second close could hit an unrelated file that reused the number.
        with self._changed:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        super().close()


class OverlappedExtraction:
    """An extraction running in a thread while the archive downloads."""

    def __init__(self, reader: GrowingFile, done: asyncio.Future[list[Path]]) -> None:
        self.reader = reader
        self.done = done
        self._ended = False

    def conflict(self) -> OverwriteConflictError | None:
        """The extraction's overwrite conflict, if it has already stopped on one."""
        if self.done.done() and not self.done.cancelled():
            error = self.done.exception()
            if isinstance(error, OverwriteConflictError):
                return error
        return None

    async def finish(self) -> list[Path]:
        """Wait for the extraction (the download has completed); raise what it raised."""
        try:
            return await self.done
        finally:
            self._close()

    async def cancel(self, reason: str) -> None:
        """The download failed: stop the extraction, which removes its staging folder."""
        self.reader.abort(reason)
        with contextlib.suppress(Exception):
            await self.done
        self._close()

    def _close(self) -> None:
        if not self._ended:
            self._ended = True
            self.reader.close()


async def start_extraction(
    handle: RemoteHandle,
    remote: RemoteFile,
    local: Path,
    *,
    overwrite: bool,
    limits: ExtractLimits,
) -> OverlappedExtraction | None:
    """Begin extracting local (about to be downloaded) if the remote file is an archive.

    None when it is not an archive, or when it is better extracted afterwards.
    The head and the end of the file are read at once, in one round trip: the
    end holds a zip's directory, and costs one 64 KiB read when it is not a zip.
    """
    end_length = min(remote.size, _EOCD.size + 0xFFFF)
    head, end = await asyncio.gather(
        read_range(handle, remote.path, 0, HEAD_BYTES),
        read_range(handle, remote.path, remote.size - end_length, end_length),
    )
    kind = detect_archive_kind_of(head)
    if kind is None:
        return None
    tail = b""
    if kind is ArchiveKind.ZIP:
        start = zip_tail_start(remote.size, end)
        if start is None:
            return None
        end_start = remote.size - len(end)
        if start >= end_start:
            tail = end[start - end_start :]
        else:
            tail = await read_range(handle, remote.path, start, end_start - start) + end
    part = part_path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    reader = GrowingFile(part, remote.size, head, tail)
    stream = cast(BinaryIO, io.BufferedReader(reader, 1 << 20))
    job: Callable[[], list[Path]]
    if kind is ArchiveKind.ZIP:
        job = functools.partial(
            extract_zip_stream,
            stream,
            remote.size,
            local.parent,
            name=local.name,
            overwrite=overwrite,
            limits=limits,
        )
    else:
        job = functools.partial(
            extract_tar_stream,
            stream,
            local.parent,
            name=local.name,
            compression=kind,
            overwrite=overwrite,
            limits=limits,
        )
    log.debug("extracting %s (%s) while it downloads", local.name, kind.value)
    done = asyncio.get_running_loop().run_in_executor(None, job)
    return OverlappedExtraction(reader, done)
