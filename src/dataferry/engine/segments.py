"""Several SSH connections per task: segmented big files, small files spread out.

Servers often cap each SSH connection (a per-session shaper, one core for the
cipher per sshd process) and a lossy far link starves one TCP stream. With
``connections: N`` a task opens up to N connections from its own
SourceConnector (the first is the try's session; the others open when first
needed and close with the try) and:

- splits a file of :data:`SEGMENT_MIN_BYTES` or more into contiguous
  segments (a multiple of N, about :data:`SEGMENT_BYTES` each); each of the N
  connections takes the next segment in file order and fetches it in order
  into its own region of the part file
  (:class:`~dataferry.sinks.base.RegionWriter`), so N segments of one file
  move at once, near each other: the part that is complete from the start
  grows steadily, and no connection idles long at the end;
- spreads the other files over the same connections: the engine's pool of
  files in flight takes connection ``k mod N`` for its k-th worker.

Resume is per segment: the part's side file records the bytes each segment
holds, only after they are durable (a checkpoint every
:data:`CHECKPOINT_SECONDS` and when a try ends). The sha256 of the whole file
is computed in order while the download goes on, reading back (in a thread)
the part file's prefix that is complete so far; it is checked against the
expected digest when there is one, and the file commits under its final name
only then. A segmented archive is extracted after its
download (not while it downloads: its bytes do not arrive in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
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
# About this big: each segment costs one round trip of idle pipeline, and the
# digest can lag the download by about one segment per connection.
SEGMENT_BYTES = 16 * 2**20
MAX_SEGMENTS = 1024  # the side file lists them all and is rewritten each checkpoint
# The side file is brought up to date (after an fdatasync) at least this often.
CHECKPOINT_SECONDS = 1.0
HASH_CHUNK = 4 * 2**20


def segment_count(size: int, connections: int) -> int:
    """A multiple of connections (they finish together), segments about SEGMENT_BYTES."""
    rounds = max(1, -(-size // (connections * SEGMENT_BYTES)))
    return max(1, min(connections * rounds, MAX_SEGMENTS))


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
        self._degraded = False

    async def lane(self, index: int) -> Source:
        """Connection index mod count, opening it on first use."""
        slot = index % self.count
        async with self._lock:
            while len(self._opened) <= slot:
                self._opened.append(asyncio.ensure_future(self._open()))
            opening = self._opened[slot]
        return await asyncio.shield(opening)

    async def _open(self) -> Source:
        try:
            source = await self._stack.enter_async_context(self.connector.session())
        except TransientError as exc:
            # E.g. a server limiting connections per user: fewer connections, not a
            # failed try (the first one works). Refused credentials still fail.
            if not self._degraded:
                log.warning(
                    "could not open another connection (%s); going on with fewer than %d",
                    exc,
                    self.count,
                )
                self._degraded = True
            return await self._opened[0]
        source.request_timeout = self.request_timeout
        return source

    async def aclose(self) -> None:
        # A slot that fell back to the first connection holds the first Source:
        # only the stack closes what was opened here.
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
        confirm_unchanged: Callable[[], Awaitable[None]] | None = None,
    ) -> Copied | None:
        """Fetch remote into relative in segments and commit it; None when the sink
        cannot write regions. pinned_by: the manifest whose pin expected_sha256 is
        (--frozen), so a mismatch is a FrozenError rather than worth a retry."""
        connections = self.settings.connections
        writer = await sink.open_regions(
            relative, remote, split(remote.size, segment_count(remote.size, connections))
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
        digest = _InOrderDigest(writer, done, remote.size)
        try:
            await self._fetch_segments(writer, remote, done, digest)
            received, head = await digest.finish()
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
            if confirm_unchanged is not None:  # a live drop folder (engine/after_fetch.py)
                await confirm_unchanged()
            local = await writer.commit(remote.mtime)
        except BaseException:
            await digest.cancel()
            await writer.close(done)
            raise
        self.observer.file_finished(self.task, remote.path, local, remote.size)
        log.debug("saved %s (%d bytes, %d segments)", shown(local), remote.size, len(done))
        return Copied(remote, local, received, held, remote.size - held, head)

    async def _fetch_segments(
        self, writer: RegionWriter, remote: RemoteFile, done: list[int], digest: _InOrderDigest
    ) -> None:
        """Every unfinished segment in file order, N at once, checkpointing meanwhile."""
        pending = [k for k, (start, end) in enumerate(writer.segments) if done[k] < end - start]
        if not pending:
            return
        lanes = [
            asyncio.ensure_future(self._lane(k, writer, remote, pending, done, digest))
            for k in range(min(len(pending), self.settings.connections))
        ]
        checkpoints = asyncio.ensure_future(_checkpoint_meanwhile(writer, done))
        try:
            finished, _ = await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
            for future in finished:
                future.result()  # the first failure, if any
        finally:
            for future in [*lanes, checkpoints]:
                future.cancel()
            await asyncio.gather(*lanes, checkpoints, return_exceptions=True)

    async def _lane(
        self,
        index: int,
        writer: RegionWriter,
        remote: RemoteFile,
        pending: list[int],
        done: list[int],
        digest: _InOrderDigest,
    ) -> None:
        """One connection taking the next pending segment until none is left. The
        first starts at once; the others as soon as their connection is open."""
        source = await self.connections.lane(index)
        if not pending:
            return
        reader = await source.open(remote)
        try:
            while pending:
                segment = pending.pop(0)
                await self._fetch_segment(writer, source, reader, segment, done)
                digest.wake()
        finally:
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


class _InOrderDigest:
    """sha256 of the part file, following the prefix that is complete so far.

    A task on the event loop finds how far the file is complete from the
    start (segments are fetched in file order, so that prefix grows during
    the download) and hashes the new bytes in a thread, reading them back from
    the part file (the page cache, usually).
    """

    def __init__(self, writer: RegionWriter, done: list[int], size: int) -> None:
        self.writer = writer
        self.done = done
        self.size = size
        self._hash = hashlib.sha256()
        self._head = b""
        self._hashed = 0
        self._stopping = False
        self._progress = asyncio.Event()
        self._task = asyncio.ensure_future(self._follow())

    def wake(self) -> None:
        self._progress.set()

    def _complete_prefix(self) -> int:
        for (start, end), held in zip(self.writer.segments, self.done, strict=True):
            if held < end - start:
                return start + held
        return self.size

    async def _follow(self) -> None:
        while self._hashed < self.size and not self._stopping:
            ready = self._complete_prefix()
            if ready - self._hashed >= HASH_CHUNK or ready == self.size:
                await asyncio.to_thread(self._hash_up_to, ready)
                continue
            self._progress.clear()
            # Woken when a segment completes; meanwhile the prefix grows block by block.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.2)

    def _hash_up_to(self, end: int) -> None:
        while self._hashed < end and not self._stopping:
            chunk = self.writer.read_at(self._hashed, min(HASH_CHUNK, end - self._hashed))
            if not chunk:
                raise TransientError(f"part file ended at {self._hashed} of {self.size} bytes")
            self._hash.update(chunk)
            if not self._head:
                self._head = chunk[:HEAD_BYTES]
            self._hashed += len(chunk)

    async def finish(self) -> tuple[str, bytes]:
        """The digest and the first bytes, once every segment is complete."""
        self.wake()
        await self._task
        return self._hash.hexdigest(), self._head

    async def cancel(self) -> None:
        # Not Task.cancel(): a thread still reading the part file would outlive it,
        # and the file closes next. Asked to stop, it ends after its current chunk.
        self._stopping = True
        self.wake()
        await asyncio.gather(self._task, return_exceptions=True)


async def _checkpoint_meanwhile(writer: RegionWriter, done: list[int]) -> None:
    while True:
        await asyncio.sleep(CHECKPOINT_SECONDS)
        await writer.checkpoint(done)
