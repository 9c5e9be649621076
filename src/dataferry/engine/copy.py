"""One file from a Source to a Sink: pipelined reads, in-order writes, a digest, resume.

The reader keeps many reads in flight and yields replies in order
(:meth:`SourceReader.stream`); each block goes to the sink's part writer,
into the sha256 computed while writing, and to an extractor when one follows
the download (:mod:`.tee`). The writer commits the file under its final name
only when it is complete and its digest is what was expected.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..observe import TaskObserver
from ..observe.units import format_bytes
from ..plan.names import shown
from ..sinks import PartWriter
from ..sources import RemoteFile, Source, SourceReader
from .tee import StreamTee

log = logging.getLogger("dataferry.copy")

# Requests in flight: enough to cover bandwidth x round trip on a far link, but
# few on a near one, where OpenSSH slows down as replies queue in its buffers
# (docs/benchmarks.md: request budget).
MIN_REQUESTS_IN_FLIGHT = 8
MAX_REQUESTS_IN_FLIGHT = 64
TARGET_RATE = 320 * 2**20  # bytes/s the request budget is sized for
HEAD_BYTES = 512
# Files at least this big are hashed in a thread beside the transfer.
THREADED_DIGEST_BYTES = 8 * 2**20


def requests_budget(source: Source) -> int:
    """Reads to keep in flight on this connection, from its measured round trip."""
    if not math.isfinite(source.round_trip):
        return MAX_REQUESTS_IN_FLIGHT  # not measured yet: assume a far link
    needed = MIN_REQUESTS_IN_FLIGHT + math.ceil(source.round_trip * TARGET_RATE / source.block_size)
    return min(MAX_REQUESTS_IN_FLIGHT, needed)


@dataclass(frozen=True)
class Copied:
    remote: RemoteFile
    local: str
    sha256: str
    resumed_from: int
    bytes_transferred: int
    head: bytes = b""  # the file's first bytes (HEAD_BYTES at most): what kind it is


class Digest:
    """sha256 of a stream; for big files computed in a thread (hashlib releases the GIL)."""

    def __init__(self, threaded: bool) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="dataferry-digest", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def update(self, data: bytes) -> None:
        if self._queue is not None:
            self._queue.put(data)
        else:
            self._hash.update(data)

    def stop(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def hexdigest(self) -> str:
        self.stop()
        return self._hash.hexdigest()


class DigestMismatch(Exception):
    """The bytes received do not have the sha256 they must have."""

    def __init__(self, path: str, expected: str, received: str) -> None:
        super().__init__(f"{path}: sha256 mismatch (expected {expected}, received {received})")
        self.expected = expected
        self.received = received


async def copy_file(
    task: str,
    source: Source,
    reader: SourceReader,
    writer: PartWriter,
    observer: TaskObserver,
    *,
    requests_in_flight: int,
    expected_sha256: str | None = None,
    tee: StreamTee | None = None,
    confirm_unchanged: Callable[[], Awaitable[None]] | None = None,
) -> Copied:
    """Fetch reader's file into writer (resuming at writer.offset) and commit it.

    With expected_sha256, the digest of the whole file must match before the
    file takes its final name; otherwise the partial file is dropped and
    DigestMismatch raised. On any other failure the partial file is kept
    (resumable) and the error raised.
    """
    remote = reader.file
    offset = writer.offset
    if offset:
        log.info(
            "resuming %s: %s of %s left",
            shown(remote.path),
            format_bytes(remote.size - offset),
            format_bytes(remote.size),
        )
    observer.file_started(task, remote.path, remote.size, offset)
    digest = Digest(threaded=remote.size >= THREADED_DIGEST_BYTES)
    head = b""
    try:
        for chunk in writer.held_prefix():
            digest.update(chunk)
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
        blocks = reader.stream(
            offset,
            remote.size,
            block_size=source.block_size,
            requests_in_flight=requests_in_flight,
            check_end=True,
        )
        try:
            async for data in blocks:
                await writer.write(data)
                digest.update(data)
                if len(head) < HEAD_BYTES:
                    head += data[: HEAD_BYTES - len(head)]
                observer.bytes_received(task, remote.path, len(data))
                if tee is not None:
                    await tee.feed(data)
        finally:
            await blocks.aclose()
        received = digest.hexdigest()
        if expected_sha256 is not None and received != expected_sha256:
            await writer.close()
            writer.discard()  # start over on the next try: these bytes cannot be trusted
            raise DigestMismatch(remote.path, expected_sha256, received)
        if confirm_unchanged is not None:
            await confirm_unchanged()  # raises TransientError: the partial file stays
        local = await writer.commit(remote.mtime)
    except BaseException:
        digest.stop()
        await writer.close()
        raise
    observer.file_finished(task, remote.path, local, remote.size)
    log.debug("saved %s (%d bytes)", shown(local), remote.size)
    return Copied(remote, local, received, offset, remote.size - offset, head)
