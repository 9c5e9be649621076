"""Extract an archive while it downloads.

Decompression is the next wall after the network, so an archive's extraction
runs in a thread while its bytes arrive. :class:`GrowingFile` is the
extractor's view of the partial file the download writes (always a clean prefix):
a read waits until the download has written the bytes it needs. A zip's
central directory sits at the end, so it is fetched first and served from
memory; the members are then inflated as the download passes them.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from pathlib import Path

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

    def __init__(self, path: Path, size: int, tail: bytes = b"") -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._size = size
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
        if not self.closed:
            os.close(self._fd)
        super().close()
