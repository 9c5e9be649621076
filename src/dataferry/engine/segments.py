"""Several SSH connections per task: segmented big files, small files spread out.

Servers often cap each SSH connection (a per-session shaper, one core for the
cipher per sshd process) and a lossy far link starves one TCP stream. With
``connections: N`` a task opens up to N connections from its own
SourceConnector (the first is the try's session; the others open when first
needed and close with the try) and:

- splits a file of :data:`SEGMENT_MIN_BYTES` or more into N contiguous
  segments; each is fetched in order over its own connection into its own
  region of the part file (:class:`~dataferry.sinks.base.RegionWriter`), so
  the segments of one file move at once;
- spreads the other files over the same connections: the engine's pool of
  files in flight takes connection ``k mod N`` for its k-th worker.

Resume is per segment: the part's side file records the bytes each segment
holds, only after they are durable (a checkpoint every
:data:`CHECKPOINT_SECONDS` and when a try ends). The sha256 of the whole file
is computed from the part file once every segment is complete (in a thread),
checked against the expected digest when there is one, and the file commits
under its final name only then. A segmented archive is extracted after its
download (not while it downloads: its bytes do not arrive in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path

from .._exceptions import FrozenError, TransientError
from .._settings import TaskSettings
from ..observe import TaskObserver
from ..plan.names import shown
from ..sinks.base import RegionWriter, Sink
from ..sources import RemoteFile, Source, SourceConnector, SourceReader
from .copy import HEAD_BYTES, Copied, requests_budget

log = logging.getLogger("dataferry.segments")

# Smaller files go over one connection: below this, the login of extra
# connections and the per-segment round trips cost more than they gain.
SEGMENT_MIN_BYTES = 64 * 2**20
# Segment boundaries fall on multiples of this (whole reads of any block size).
SEGMENT_ALIGN = 2**20
# The side file is brought up to date (after an fdatasync) at least this often.
CHECKPOINT_SECONDS = 1.0
HASH_CHUNK = 4 * 2**20


def split(size: int, count: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering size bytes: count of them (fewer for a small size),
    contiguous, in order, boundaries on SEGMENT_ALIGN."""
    count = max(1, min(count, size // SEGMENT_ALIGN))
    # Each boundary rounded down: segments differ by at most one SEGMENT_ALIGN.
    bounds = [k * size // count // SEGMENT_ALIGN * SEGMENT_ALIGN for k in range(count)] + [size]
    ranges = [(bounds[k], bounds[k + 1]) for k in range(count)]
    return [(start, end) for start, end in ranges if end > start]


class Connections:
    """The connections of one try: its session first, the others opened when needed."""

    def __init__(
        self, connector: SourceConnector, first: Source, count: int, request_timeout: float
    ) -> None:
        self.connector = connector
        self.count = count
        self.request_timeout = request_timeout
        self._opened: list[asyncio.Future[Source]] = [asyncio.get_running_loop().create_future()]
        self._opened[0].set_result(first)
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def lane(self, index: int) -> Source:
        """Connection index mod count, opening it on first use."""
        slot = index % self.count
        async with self._lock:
            while len(self._opened) <= slot:
                self._opened.append(asyncio.ensure_future(self._open()))
            opening = self._opened[slot]
        return await asyncio.shield(opening)

    async def lanes(self, count: int) -> list[Source]:
        """The first count connections (opened at once when missing)."""
        return list(await asyncio.gather(*(self.lane(k) for k in range(count))))

    async def _open(self) -> Source:
        source = await self._stack.enter_async_context(self.connector.session())
        source.request_timeout = self.request_timeout
        return source

    async def aclose(self) -> None:
        for opening in self._opened[1:]:
            if not opening.done():
                opening.cancel()
        await asyncio.gather(*self._opened[1:], return_exceptions=True)
        await self._stack.aclose()


class SegmentedFetches:
    """What one try needs to fetch big files in segments over several connections."""

    def __init__(
        self,
        settings: TaskSettings,
        connector: SourceConnector,
        first: Source,
        observer: TaskObserver,
    ) -> None:
        self.settings = settings
        self.task = settings.name
        self.observer = observer
        self.connections = Connections(
            connector, first, settings.connections, settings.request_timeout
        )

    def takes(self, remote: RemoteFile) -> bool:
        """Whether this file goes in segments (the sink may still decline)."""
        return self.settings.connections > 1 and remote.size >= SEGMENT_MIN_BYTES

    async def lane(self, index: int) -> Source:
        return await self.connections.lane(index)

    async def aclose(self) -> None:
        await self.connections.aclose()

    async def fetch(
        self,
        sink: Sink,
        relative: str,
        remote: RemoteFile,
        *,
        expected_sha256: str | None,
        pinned_by: Path | None,
    ) -> Copied | None:
        """Fetch remote into relative in segments and commit it; None when the sink
        cannot write regions. pinned_by: the manifest whose pin expected_sha256 is
        (--frozen), so a mismatch is a FrozenError rather than worth a retry."""
        writer = await sink.open_regions(
            relative, remote, split(remote.size, self.settings.connections)
        )
        if writer is None:
            return None
        done = list(writer.held)
        held = sum(done)
        if held:
            log.info(
                "resuming %s: %d of %d bytes held in %d segments",
                shown(remote.path),
                held,
                remote.size,
                len(writer.segments),
            )
        self.observer.file_started(self.task, remote.path, remote.size, held)
        try:
            await self._fetch_segments(writer, remote, done)
        except BaseException:
            await writer.close(done)
            raise
        try:
            received, head = await asyncio.to_thread(_digest, writer, remote.size)
            if expected_sha256 is not None and received != expected_sha256:
                writer.discard()  # start over on the next try: these bytes cannot be trusted
                if pinned_by is not None:
                    raise FrozenError(
                        f"{self.task}: {remote.path} has changed since the manifest "
                        f"{pinned_by} pinned it (sha256 {received}, pinned "
                        f"{expected_sha256}); nothing was written"
                    )
                raise TransientError(
                    f"{remote.path}: sha256 mismatch (expected {expected_sha256}, "
                    f"received {received})"
                )
            local = await writer.commit(remote.mtime)
        except BaseException:
            await writer.close(done)
            raise
        self.observer.file_finished(self.task, remote.path, local, remote.size)
        log.debug("saved %s (%d bytes, %d segments)", shown(local), remote.size, len(done))
        return Copied(remote, local, received, held, remote.size - held, head)

    async def _fetch_segments(
        self, writer: RegionWriter, remote: RemoteFile, done: list[int]
    ) -> None:
        """Every unfinished segment, each over its own connection, checkpointing meanwhile."""
        todo = [k for k, (start, end) in enumerate(writer.segments) if done[k] < end - start]
        if not todo:
            return
        sources = await self.connections.lanes(min(len(todo), self.settings.connections))
        readers: list[SourceReader] = []
        try:
            readers = list(await asyncio.gather(*(source.open(remote) for source in sources)))
            pending = list(todo)

            async def lane(k: int) -> None:
                while pending:
                    segment = pending.pop(0)
                    await self._fetch_segment(writer, sources[k], readers[k], segment, done)

            lanes = [asyncio.ensure_future(lane(k)) for k in range(len(sources))]
            checkpoints = asyncio.ensure_future(_checkpoint_meanwhile(writer, done))
            try:
                finished, _ = await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
                for future in finished:
                    future.result()  # the first failure, if any
            finally:
                for future in [*lanes, checkpoints]:
                    future.cancel()
                await asyncio.gather(*lanes, checkpoints, return_exceptions=True)
        finally:
            for reader in readers:
                reader.close_later()

    async def _fetch_segment(
        self,
        writer: RegionWriter,
        source: Source,
        reader: SourceReader,
        index: int,
        done: list[int],
    ) -> None:
        start, end = writer.segments[index]
        position = start + done[index]
        blocks = reader.stream(
            position,
            end,
            block_size=source.block_size,
            requests_in_flight=requests_budget(source),
            # The last segment checks that the file ends where it was listed.
            check_end=end == reader.file.size,
        )
        try:
            async for data in blocks:
                await writer.write_at(position, data)
                position += len(data)
                done[index] = position - start
                self.observer.bytes_received(self.task, reader.file.path, len(data))
        finally:
            await blocks.aclose()


async def _checkpoint_meanwhile(writer: RegionWriter, done: list[int]) -> None:
    while True:
        await asyncio.sleep(CHECKPOINT_SECONDS)
        await writer.checkpoint(done)


def _digest(writer: RegionWriter, size: int) -> tuple[str, bytes]:
    """sha256 of the complete part file and its first bytes (in a thread)."""
    digest = hashlib.sha256()
    head = b""
    position = 0
    while position < size:
        chunk = writer.read_at(position, min(HASH_CHUNK, size - position))
        if not chunk:
            raise TransientError(f"part file ended at {position} of {size} bytes")
        digest.update(chunk)
        if not head:
            head = chunk[:HEAD_BYTES]
        position += len(chunk)
    return digest.hexdigest(), head
