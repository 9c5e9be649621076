"""Extraction while downloading: the engine tees the downloaded bytes to an extractor.

Decompression is the next wall after the network, so an archive's extraction
runs in a thread while its bytes arrive. :class:`StreamTee` is the
extractor's view of the download: the engine feeds it each block as it writes
it to the sink, and a read waits until the bytes it needs have arrived. It
keeps only a bounded window in memory (the download waits when the extractor
falls that far behind), so it works the same for any sink, and never reads
the sink's partial file back.

The first and last bytes of the archive are fetched before the download (one
round trip) and served from memory: the head tells the format, the end holds
a zip's central directory, so a zip's members can be inflated as they pass.
An extractor that seeks back past the window (a zip whose directory lists its
members out of order) gets :class:`ReplayNeeded`; the engine then extracts
after the download instead.
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
from collections import deque
from collections.abc import Callable
from typing import BinaryIO, cast

from .._exceptions import OverwriteConflictError
from ..extract import ArchiveKind, ExtractLimits, detect_archive_kind_of
from ..sinks import Extracted, Sink
from ..sources import SourceReader

log = logging.getLogger("dataferry.tee")

# Fetched before the download to recognise the archive (and a zip's directory).
HEAD_BYTES = 64 * 1024
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_MAGIC = b"PK\x05\x06"
_MAX_TAIL = 64 * 2**20
# How far the download may run ahead of the extractor, and how much the
# extractor may seek back, in bytes held in memory.
MAX_AHEAD = 64 * 2**20
KEEP_BEHIND = 4 * 2**20


class DownloadAborted(Exception):
    """The download feeding a StreamTee failed; the extraction must stop."""


class ReplayNeeded(Exception):
    """The extractor sought back past the bytes kept in memory."""


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


class StreamTee(io.RawIOBase):
    """A seekable, read-only view of a download in progress, held in a bounded window."""

    def __init__(self, name: str, size: int, head: bytes = b"", tail: bytes = b"") -> None:
        super().__init__()
        self.name = name
        self._size = size
        self._head = head
        self._tail = tail
        self._tail_start = size - len(tail)
        # Blocks of the download still held: (offset, bytes), in order.
        self._blocks: deque[tuple[int, bytes]] = deque()
        self._held_from = 0  # offset of the first byte still held
        self._fed = 0  # bytes of the download fed so far
        self._failure: str | None = None
        self._finished = False  # the extractor is done: drop what arrives
        self._position = 0
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None

    # -- the download's side (event-loop thread)

    async def feed(self, data: bytes) -> None:
        """Hand the next block of the download over; waits while the extractor lags far."""
        with self._changed:
            if not self._finished:
                self._blocks.append((self._fed, data))
            self._fed += len(data)
            self._changed.notify_all()
            lagging = not self._finished and self._fed - self._position > MAX_AHEAD
        if lagging:
            if self._room is None:
                self._loop = asyncio.get_running_loop()
                self._room = asyncio.Event()
            self._room.clear()
            with self._changed:
                lagging = not self._finished and self._fed - self._position > MAX_AHEAD
            if lagging:
                await self._room.wait()

    def abort(self, reason: str) -> None:
        with self._changed:
            self._failure = reason
            self._changed.notify_all()

    # -- the extractor's side (its own thread)

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
            data = self._take(start, min(end, self._tail_start))
        view[: len(data)] = data
        self._position = start + len(data)
        self._made_room()
        return len(data)

    def _take(self, start: int, end: int) -> bytes:
        with self._changed:
            while self._fed < end:
                if self._failure is not None:
                    raise DownloadAborted(self._failure)
                self._changed.wait()
            if start < self._held_from:
                raise ReplayNeeded(f"{self.name}: read at {start}, window starts {self._held_from}")
            # Drop blocks wholly behind what the extractor may still seek back to.
            floor = start - KEEP_BEHIND
            while self._blocks and self._blocks[0][0] + len(self._blocks[0][1]) <= floor:
                offset, block = self._blocks.popleft()
                self._held_from = offset + len(block)
            pieces = []
            for offset, block in self._blocks:
                block_end = offset + len(block)
                if block_end <= start:
                    continue
                if offset >= end:
                    break
                pieces.append(block[max(0, start - offset) : end - offset])
            return b"".join(pieces)

    def _made_room(self) -> None:
        room, loop = self._room, self._loop
        if room is not None and loop is not None and self._fed - self._position <= MAX_AHEAD:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(room.set)

    def finish(self) -> None:
        """The extractor is done (or gave up): stop holding bytes, release the download."""
        with self._changed:
            self._finished = True
            self._blocks.clear()
            self._position = self._size
        self._made_room()


class OverlappedExtraction:
    """An extraction running in a thread while the archive downloads."""

    def __init__(self, tee: StreamTee, done: asyncio.Future[list[Extracted]]) -> None:
        self.tee = tee
        self.done = done
        self._ended = False

    def conflict(self) -> OverwriteConflictError | None:
        """The extraction's overwrite conflict, if it has already stopped on one."""
        if self.done.done() and not self.done.cancelled():
            error = self.done.exception()
            if isinstance(error, OverwriteConflictError):
                return error
        return None

    async def finish(self) -> list[Extracted] | None:
        """Wait for the extraction (the download has completed).

        None when the extractor needed to seek back past the window: the
        caller extracts the committed archive instead.
        """
        try:
            return await self.done
        except ReplayNeeded as exc:
            log.debug("extracting after the download instead: %s", exc)
            return None

    async def cancel(self, reason: str) -> None:
        """The download failed: stop the extraction, which removes its staging folder."""
        self.tee.abort(reason)
        with contextlib.suppress(Exception):
            await self.done


async def start_extraction(
    reader: SourceReader,
    sink: Sink,
    relative: str,
    *,
    overwrite: bool,
    owned: frozenset[str],
    limits: ExtractLimits,
    before_install: Callable[[list[Extracted]], None] | None = None,
) -> OverlappedExtraction | None:
    """Begin extracting reader's file (about to be downloaded) if it is an archive.

    None when it is not an archive, or when it is better extracted afterwards.
    The head and the end of the file are read at once, in one round trip: the
    end holds a zip's directory, and costs one 64 KiB read when it is not a zip.
    """
    size = reader.file.size
    end_length = min(size, _EOCD.size + 0xFFFF)
    head, end = await asyncio.gather(
        reader.read_range(0, HEAD_BYTES), reader.read_range(size - end_length, end_length)
    )
    kind = detect_archive_kind_of(head)
    if kind is None:
        return None
    tail = b""
    if kind is ArchiveKind.ZIP:
        start = zip_tail_start(size, end)
        if start is None:
            return None
        end_start = size - len(end)
        if start >= end_start:
            tail = end[start - end_start :]
        else:
            tail = await reader.read_range(start, end_start - start) + end
    tee = StreamTee(relative, size, head, tail)
    stream = cast(BinaryIO, io.BufferedReader(tee, 1 << 20))
    job: Callable[[], list[Extracted]] = functools.partial(
        _extract_then_release,
        tee,
        functools.partial(
            sink.extract_stream,
            stream,
            size,
            relative,
            kind,
            overwrite=overwrite,
            owned=owned,
            limits=limits,
            before_install=before_install,
        ),
    )
    log.debug("extracting %s (%s) while it downloads", relative, kind.value)
    done = asyncio.get_running_loop().run_in_executor(None, job)
    return OverlappedExtraction(tee, done)


def _extract_then_release(
    tee: StreamTee, extract: Callable[[], list[Extracted]]
) -> list[Extracted]:
    try:
        return extract()
    finally:
        tee.finish()
