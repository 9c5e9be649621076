"""A multipart upload written in segments by several connections (segmented downloads).

The object store's answer to ``sinks/local_regions.py``. Part ``n`` always
covers bytes ``[(n-1)*P, n*P)`` of the file (P from ``part_size_for``, as for a
sequential upload), so every segment boundary falls on a part boundary and
each segment uploads its own parts, with the part numbers of its range, as
its bytes arrive. The upload completes (the object appears under its key)
only in :meth:`S3RegionWriter.commit`, once every segment is done.

Segments: the engine's proposal, each boundary moved to the nearest part
boundary, and a segment longer than :data:`MAX_SEGMENT_BYTES` (or one part,
whichever is more) split further, so the bytes waiting to be hashed stay few.

Resume: an unfinished multipart upload cannot be read back, so nothing counts
as held (``held`` is all zeros: the file is fetched again and its sha256
computed in order as the bytes stream). The upload id is kept as a sequential
upload keeps it (``uploads.py``), and a part an earlier run already stored
(ListParts: same number, size and MD5) is not sent again. The part layout is
the same with or without segments: a run over one connection reuses the parts
a segmented run stored, and the other way round.

Memory: the engine hashes the file in order, reading it back with
:meth:`S3RegionWriter.read_at`; bytes are kept until they are hashed. A
connection ahead of the complete prefix waits once more than
:data:`RETAINED_PARTS` parts are kept; the connection filling the lowest
unfinished segment never waits, so the prefix always grows.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._exceptions import TransientError
from ...plan.names import shown
from ...sources import RemoteFile
from ..base import RegionWriter
from .uploads import drop_record
from .writer import MIB, S3PartWriter, part_size_for

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("dataferry.sink.s3")

# A segment is at most this long (or one part): the connections ahead of the
# complete prefix hold their bytes in memory until the prefix reaches them.
MAX_SEGMENT_BYTES = 32 * MIB
# Bytes kept for the digest before connections ahead of the prefix wait (in parts).
RETAINED_PARTS = 16


def part_aligned_segments(
    size: int, proposed: list[tuple[int, int]], part_size: int
) -> list[tuple[int, int]]:
    """proposed with each boundary on the nearest multiple of part_size (segments that
    vanish are merged), long segments split; contiguous, in order, covering size."""
    bounds = {0, size}
    for start, _ in proposed[1:]:
        aligned = (start + part_size // 2) // part_size * part_size
        if 0 < aligned < size:
            bounds.add(aligned)
    longest = max(part_size, MAX_SEGMENT_BYTES // part_size * part_size)
    ordered = sorted(bounds)
    segments: list[tuple[int, int]] = []
    for start, end in itertools.pairwise(ordered):
        while end - start > longest:
            segments.append((start, start + longest))
            start += longest
        segments.append((start, end))
    return segments


@dataclass
class _Segment:
    start: int
    end: int
    position: int
    # The bytes of the part being filled, from its start to position.
    buffer: bytearray = field(default_factory=bytearray)


class S3RegionWriter(RegionWriter):
    def __init__(
        self, sink: S3Sink, relative: str, remote: RemoteFile, proposed: list[tuple[int, int]]
    ) -> None:
        self.sink = sink
        self.remote = remote
        self.size = remote.size
        self.part_size = part_size_for(remote.size)
        # The upload itself (create or resume, send parts, complete, abort).
        self.parts = S3PartWriter(sink, relative, remote)
        self.segments = part_aligned_segments(remote.size, proposed, self.part_size)
        self.held = [0] * len(self.segments)
        self.limit = RETAINED_PARTS * self.part_size
        self._starts = [start for start, _ in self.segments]
        self._state = [_Segment(start, end, start) for start, end in self.segments]
        # Complete parts not hashed yet, by index (part number - 1).
        self._complete: dict[int, bytes] = {}
        self._retained = 0
        # read_at runs in a thread: the buffers are touched under this lock.
        self._lock = threading.Lock()
        self._room = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def key(self) -> str:
        return self.parts.key

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.parts.open()

    # -- writing ----------------------------------------------------------------

    def _segment_at(self, offset: int) -> _Segment:
        return self._state[bisect.bisect_right(self._starts, offset) - 1]

    def _lowest_unfinished(self) -> _Segment | None:
        for segment in self._state:
            if segment.position < segment.end:
                return segment
        return None

    async def _wait_for_room(self, segment: _Segment) -> None:
        while self._retained >= self.limit and segment is not self._lowest_unfinished():
            self._room.clear()
            await self._room.wait()

    async def write_at(self, offset: int, data: bytes) -> None:
        self.parts._raise_failure()
        segment = self._segment_at(offset)
        if offset != segment.position or offset + len(data) > segment.end:
            raise TransientError(
                f"{self.remote.path}: {len(data)} bytes at {offset} do not continue the "
                f"segment [{segment.start}, {segment.end}) at {segment.position}"
            )
        await self._wait_for_room(segment)
        view = memoryview(data)
        while view:
            index = segment.position // self.part_size
            part_end = min((index + 1) * self.part_size, self.size)
            take = min(len(view), part_end - segment.position)
            with self._lock:
                segment.buffer += view[:take]
                segment.position += take
                self._retained += take
            view = view[take:]
            if segment.position == part_end:
                with self._lock:
                    body = bytes(segment.buffer)
                    self._complete[index] = body
                    segment.buffer = bytearray()
                if segment.position == segment.end:
                    self._room.set()  # the lowest unfinished segment may have moved
                await self.parts.send_part(index + 1, body)

    async def checkpoint(self, done: list[int]) -> None:
        # Each part is durable once uploaded and the upload id is kept since it
        # began: nothing more to record. A failed part upload surfaces here.
        self.parts._raise_failure()

    def read_at(self, offset: int, length: int) -> bytes:
        index = offset // self.part_size
        base = index * self.part_size
        with self._lock:
            body: bytes | bytearray | None = self._complete.get(index)
            complete = body is not None
            if body is None:
                segment = self._segment_at(offset)
                if segment.position // self.part_size == index:
                    body = segment.buffer
            if body is None:
                return b""
            chunk = bytes(body[offset - base : offset - base + length])
            if complete and offset - base + len(chunk) == len(body):
                # Hashed to the part's end: the digest never reads it again.
                del self._complete[index]
                self._retained -= len(body)
                freed = True
            else:
                freed = False
        if freed and self._loop is not None:
            self._loop.call_soon_threadsafe(self._room.set)
        return chunk

    # -- ending -----------------------------------------------------------------

    def _release(self) -> None:
        with self._lock:
            self._complete.clear()
            for segment in self._state:
                segment.buffer = bytearray()
            self._retained = 0

    async def commit(self, mtime: int) -> str:
        writer = self.parts
        writer._raise_failure()
        refused = self.sink.refused.get(writer.relative)
        if refused is not None:
            await writer._drain()
            self.discard()
            raise refused
        written = sum(segment.position - segment.start for segment in self._state)
        if written != self.size:
            await writer._drain()
            raise TransientError(f"{self.remote.path}: got {written} of {self.size} bytes")
        self._release()
        await writer._drain()
        writer._raise_failure()
        parts = -(-self.size // self.part_size)
        if sorted(writer._etags) != list(range(1, parts + 1)):
            raise TransientError(f"{self.remote.path}: parts missing from the upload")
        await self.sink.call(writer._complete, mtime)
        drop_record(self.sink.bucket, self.key)
        self.sink.closed(self.key)
        log.info(
            "%s: %d part(s) uploaded, %d already stored",
            shown(writer.where),
            writer.sent_parts,
            writer.reused_parts,
        )
        return writer.where

    async def close(self, done: list[int]) -> None:
        self._release()
        self._room.set()
        await self.parts.close()

    def discard(self) -> None:
        self._release()
        self.parts.discard()
