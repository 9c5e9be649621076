"""In-memory Source and Sink, for unit tests of pure logic (planning, skipping,
conflicts, retries). They pass the same conformance suites as the real ones
(tests/conformance/); integration tests use the real sshd and embedded server.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dataferry._exceptions import DestinationError, RemotePathError, TransientError
from dataferry.extract import ArchiveKind, ExtractLimits, detect_archive_kind_of
from dataferry.sinks import Extracted, Held, PartWriter, Sink
from dataferry.sources import Listing, RemoteFile, Selection, Source, SourceConnector, SourceReader
from dataferry.sources.base import as_selection


@dataclass
class MemoryServer:
    """The files a MemorySource serves, and faults to inject."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mtime)
    block_size: int = 64 * 1024
    fail_sessions: int = 0  # the next N sessions fail to connect (transient)
    fail_reads_after: int | None = None  # reads served before each session's reads fail
    sessions: int = 0
    reads: int = 0

    def put(self, path: str, data: bytes, mtime: int = 1_700_000_000) -> RemoteFile:
        self.files[path] = (data, mtime)
        return RemoteFile(path, len(data), mtime)


class MemoryReader(SourceReader):
    def __init__(self, file: RemoteFile, source: MemorySource) -> None:
        super().__init__(file)
        self._source = source
        self.closed = False

    async def read(self, offset: int, length: int) -> bytes:
        return self._source.read(self.file.path, offset, length)

    def close_later(self) -> None:
        self.closed = True


class MemorySource(Source):
    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.round_trip = 0.0
        self.reads_left = server.fail_reads_after

    def describe(self) -> str:
        return "memory"

    @property
    def block_size(self) -> int:
        return self.server.block_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        if self.reads_left is not None:
            if self.reads_left <= 0:
                raise TransientError(f"connection lost while reading {path}")
            self.reads_left -= 1
        self.server.reads += 1
        try:
            data = self.server.files[path][0]
        except KeyError:
            raise RemotePathError(f"remote path not found: {path}") from None
        # Cap replies like a server with a smaller read limit would.
        return data[offset : offset + min(length, self.server.block_size)]

    async def find(self, path: str, include: tuple[str, ...] | Selection) -> Listing:
        if path in self.server.files:
            data, mtime = self.server.files[path]
            return Listing(path, False, (RemoteFile(path, len(data), mtime),))
        prefix = path.rstrip("/") + "/"
        children = {p: v for p, v in self.server.files.items() if p.startswith(prefix)}
        if not children:
            raise RemotePathError(f"remote path not found: {path}")
        selection = as_selection(include)
        files = []
        entered: dict[str, bool] = {}  # folder -> the selection lets it in
        for remote_path, (data, mtime) in sorted(children.items()):
            relative = remote_path[len(prefix) :]
            parts = relative.split("/")
            if not all(
                self._enter("/".join(parts[: depth + 1]), selection, entered)
                for depth in range(len(parts) - 1)
            ):
                continue
            if selection.file_skip_reason(relative, len(data), mtime) is None:
                files.append(RemoteFile(remote_path, len(data), mtime))
            else:
                selection.left_out(relative, "skipped")
        return Listing(path, True, tuple(files))

    @staticmethod
    def _enter(folder: str, selection: Selection, entered: dict[str, bool]) -> bool:
        if folder not in entered:
            reason = selection.folder_skip_reason(folder)
            entered[folder] = reason is None
            if reason is not None:
                selection.left_out(folder + "/", reason)
        return entered[folder]

    async def open(self, file: RemoteFile) -> MemoryReader:
        if file.path not in self.server.files:
            raise RemotePathError(f"remote path not found: {file.path}")
        return MemoryReader(file, self)


class MemoryConnector(SourceConnector):
    def __init__(self, server: MemoryServer) -> None:
        self.server = server

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[MemorySource]:
        self.server.sessions += 1
        if self.server.fail_sessions > 0:
            self.server.fail_sessions -= 1
            raise TransientError("cannot connect to memory: connection refused")
        yield MemorySource(self.server)


@dataclass
class MemoryFile:
    data: bytes
    mtime: int


class MemoryPartWriter(PartWriter):
    def __init__(self, sink: MemorySink, relative: str, source: RemoteFile) -> None:
        self.sink = sink
        self.relative = relative
        self.source = source
        held = sink.parts.get(relative)
        if held is not None and held[0] == source:
            self.offset = len(held[1])
            self._buffer = bytearray(held[1])
        else:
            self.offset = 0
            self._buffer = bytearray()
            sink.parts[relative] = (source, b"")

    def held_prefix(self) -> Iterator[bytes]:
        yield bytes(self._buffer[: self.offset])

    async def write(self, data: bytes) -> None:
        if self.sink.capacity is not None and self.sink.used() + len(data) > self.sink.capacity:
            raise DestinationError(f"cannot write {self.sink.describe(self.relative)}: disk full")
        self._buffer += data
        self.sink.parts[self.relative] = (self.source, bytes(self._buffer))

    async def commit(self, mtime: int) -> str:
        if len(self._buffer) != self.source.size:
            raise TransientError(
                f"{self.source.path}: got {len(self._buffer)} of {self.source.size} bytes"
            )
        self.sink.files[self.relative] = MemoryFile(bytes(self._buffer), mtime)
        del self.sink.parts[self.relative]
        return self.sink.describe(self.relative)

    async def close(self) -> None:
        pass

    def discard(self) -> None:
        self.sink.parts.pop(self.relative, None)


class MemorySink(Sink):
    """Results as bytes in a dict; partial files in another (what a crash would leave)."""

    locks: dict[str, threading.Lock] = {}

    def __init__(self, root: Path, capacity: int | None = None) -> None:
        self.root = root
        self.files: dict[str, MemoryFile] = {}
        self.parts: dict[str, tuple[RemoteFile, bytes]] = {}
        self.capacity = capacity

    def used(self) -> int:
        return sum(len(f.data) for f in self.files.values()) + sum(
            len(p[1]) for p in self.parts.values()
        )

    def describe(self, relative: str = "") -> str:
        return f"memory:{self.root}/{relative}" if relative else f"memory:{self.root}"

    @contextlib.contextmanager
    def lock(self, task: str) -> Iterator[None]:
        lock = self.locks.setdefault(str(self.root), threading.Lock())
        if not lock.acquire(timeout=5):
            raise DestinationError(f"{task}: another run still writes to {self.describe()}")
        try:
            yield
        finally:
            lock.release()

    def held(self, relative: str) -> Held | None:
        found = self.files.get(relative)
        return None if found is None else Held(len(found.data), found.mtime)

    def exists(self, relative: str) -> bool:
        # A folder exists too: the folder of a result.
        folder = relative.rstrip("/") + "/"
        return relative in self.files or any(path.startswith(folder) for path in self.files)

    def has_partial(self, relative: str) -> bool:
        return relative in self.parts

    async def open_part(self, relative: str, source: RemoteFile) -> MemoryPartWriter:
        return MemoryPartWriter(self, relative, source)

    async def finish(self) -> None:
        pass

    def remove(self, relative: str) -> None:
        del self.files[relative]

    def extract_file(
        self,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
    ) -> list[Extracted]:
        raise NotImplementedError("the memory sink holds no archives")

    def extract_stream(
        self,
        stream: BinaryIO,
        size: int,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
    ) -> list[Extracted]:
        raise NotImplementedError("the memory sink holds no archives")

    def open_result(self, relative: str) -> BinaryIO:
        return io.BytesIO(self.files[relative].data)

    def archive_kind(self, relative: str) -> ArchiveKind | None:
        return detect_archive_kind_of(self.files[relative].data[:65536])
