"""What the engine needs from a place files come from: the Source interface.

A :class:`SourceConnector` opens sessions (one per try); a :class:`Source` is
one session: stat, find and walk folders, open readers, digests, and facts
about the link (round trip, block size, handle limit) the engine sizes its
pipelining by. A :class:`SourceReader` serves reads of one open file; its
:meth:`~SourceReader.stream` keeps many reads in flight and yields the
replies strictly in order, the property that makes resuming safe.

Implementations raise dataferry's exceptions only: RemotePathError for a
missing or unreadable path, TransientError for anything worth retrying.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fnmatch
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import PurePosixPath

from .._exceptions import TransientError


@dataclass(frozen=True)
class RemoteFile:
    """A regular file on the source, as listed when planning."""

    path: str
    size: int
    mtime: int

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class Listing:
    """What a remote path is: one file, or a folder and its matching files.

    For a folder, files holds only what the selection kept, sorted by path;
    everything else was dropped as it arrived (a listing may be huge).
    """

    path: str
    is_folder: bool
    files: tuple[RemoteFile, ...]


# Told to Selection.left_out for a listed name no folder entry can have ("", "/",
# "a/b", NUL): only a hostile server sends one; no request goes out for it.
UNLISTABLE = "a name no folder entry can have"


class Selection:
    """Which entries of a remote folder (tree) to keep; a source asks as entries arrive.

    Paths given to these methods are relative to the listed folder (POSIX,
    ``sub/name.csv``). This base keeps the regular files directly in the folder
    whose names match one of include (fnmatch), and enters no subfolder;
    plan/filters.py has the full rules (trees, excludes, sizes, ages).
    """

    def __init__(self, include: tuple[str, ...] = ("*",)) -> None:
        self.include = include

    def folder_skip_reason(self, relative: str) -> str | None:
        """Why not to list the subfolder at relative, or None to list it."""
        return "recursive is off"

    def file_skip_reason(self, relative: str, size: int, mtime: int) -> str | None:
        """Why not to keep the regular file at relative, or None to keep it."""
        name = PurePosixPath(relative).name
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.include):
            return None
        return "matches no include pattern"

    def left_out(self, relative: str, reason: str) -> None:
        """Told of each entry not kept (skipped by a rule, a link, a special file)."""


def as_selection(include: tuple[str, ...] | Selection) -> Selection:
    return include if isinstance(include, Selection) else Selection(include)


class SourceReader(abc.ABC):
    """One open remote file."""

    def __init__(self, file: RemoteFile) -> None:
        self.file = file

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """One read request: at most length bytes at offset (fewer at the end, or capped)."""

    @abc.abstractmethod
    def close_later(self) -> None:
        """Close without waiting for the server's reply."""

    async def read_range(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length), fewer only at the end of the file."""
        chunks: list[bytes] = []
        while length > 0:
            data = await self.read(offset, length)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(chunks)

    async def stream(
        self,
        start: int,
        end: int,
        *,
        block_size: int,
        requests_in_flight: int,
        check_end: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) in order, with up to requests_in_flight reads outstanding.

        A short reply (a server cap, or a file that shrank) is completed at
        once; a file that ends early raises TransientError (it changed).
        check_end: end is the file's listed size; a read there, sent with the
        last blocks (no extra round trip), must find nothing, or the file is
        longer than listed (it grew, or the listing lied): TransientError.
        """
        next_offset = start
        pending: deque[tuple[int, int, asyncio.Future[bytes]]] = deque()
        probe: asyncio.Future[bytes] | None = None
        try:
            while pending or next_offset < end:
                while next_offset < end and len(pending) < requests_in_flight:
                    length = min(block_size, end - next_offset)
                    read = asyncio.ensure_future(self.read(next_offset, length))
                    pending.append((next_offset, length, read))
                    next_offset += length
                if check_end and probe is None and next_offset >= end:
                    probe = asyncio.ensure_future(self.read(end, 1))
                offset, length, task = pending.popleft()
                data = await task
                while len(data) < length:
                    more = await self.read(offset + len(data), length - len(data))
                    if not more:
                        raise TransientError(
                            f"{self.file.path}: file ended at {offset + len(data)} bytes, "
                            f"expected {self.file.size}; it changed during the transfer"
                        )
                    data += more
                yield data
            if check_end:
                if probe is None:
                    probe = asyncio.ensure_future(self.read(end, 1))
                if await probe:
                    raise TransientError(
                        f"{self.file.path}: longer than the {end} bytes listed; "
                        "it changed during the transfer"
                    )
        finally:
            if probe is not None and not probe.done():
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await probe
            for _, _, task in pending:
                task.cancel()
            for _, _, task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class Source(abc.ABC):
    """One session with a server."""

    #: The fastest request seen: a fair estimate of the link's round trip (inf: none yet).
    round_trip: float = float("inf")
    #: Seconds of silence after which one request fails (as transient); the engine
    #: sets it from the task's request_timeout.
    request_timeout: float = 60.0

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this source is, for messages (never with secrets)."""

    @property
    @abc.abstractmethod
    def block_size(self) -> int:
        """The largest read the server answers in full."""

    @property
    def max_open_handles(self) -> int:
        """The server's limit on open files, 0 when it states none."""
        return 0

    @abc.abstractmethod
    async def find(self, path: str, include: tuple[str, ...] | Selection) -> Listing:
        """The file at path, or, when it is a folder, its regular files the selection keeps.

        A tuple of patterns is a :class:`Selection` of that folder's files by name.
        """

    async def walk(
        self, folder: str, include: tuple[str, ...] | Selection
    ) -> AsyncIterator[RemoteFile]:
        """The files of folder that match include, as a stream."""
        listing = await self.find(folder, include)
        for file in listing.files:
            yield file

    @abc.abstractmethod
    async def open(self, file: RemoteFile) -> SourceReader:
        """Open file for reading; the reader is closed with close_later()."""

    async def sha256_digests(self, paths: list[str]) -> dict[str, str]:
        """Digests computed by the server, when it can; ConfigError when it cannot."""
        from .._exceptions import ConfigError

        raise ConfigError(f"verify is sha256 but {self.describe()} cannot compute digests")

    async def remove(self, path: str) -> None:
        """Delete a remote file (after_fetch: delete); RemotePathError when refused."""
        from .._exceptions import RemotePathError

        raise RemotePathError(f"{self.describe()} cannot delete {path}")

    async def move(self, path: str, new_path: str) -> None:
        """Rename a remote file, never over an existing one (after_fetch: move),
        creating new_path's folders; RemotePathError when refused."""
        from .._exceptions import RemotePathError

        raise RemotePathError(f"{self.describe()} cannot move {path}")

    async def drain(self) -> None:  # noqa: B027  (optional hook)
        """Wait for requests still settling in the background (closes)."""


class SourceConnector(abc.ABC):
    """Opens sessions to one place; may connect ahead of need and reuse what works."""

    def start(self) -> None:  # noqa: B027  (optional hook)
        """Begin connecting now (inside the running event loop)."""

    @abc.abstractmethod
    def session(self) -> AbstractAsyncContextManager[Source]:
        """A session for one try; a failure here is that try's failure."""

    async def aclose(self) -> None:  # noqa: B027  (optional hook)
        """Close what was opened ahead of need and not used."""
