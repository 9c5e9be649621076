"""One shard of a task, run on a Dask worker: the ordinary engine over some files.

Everything a worker needs travels by value in a :class:`Shard` (pickled by
Dask): the task's settings (absolute paths), the connection settings (the
password a :class:`~dataferry._connection.Secret`: never in a repr, a key, a
log line or a manifest), the remote paths of the shard and the coordinator's
manifest record of the task, as manifest text. The worker never touches the
manifest file or the destination's lock (the coordinator holds both): its
:class:`ShardStore` answers ``load`` from that record and collects what the
engine would have written, which the worker returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .._connection import ConnectionSettings
from .._settings import TaskSettings
from ..engine import TaskReport, run_task
from ..manifest import Entry, Manifest, ManifestStore
from ..manifest.format import loads
from ..sources import Listing, RemoteFile, Source, SourceConnector, SourceReader
from ..sources.base import Selection


@dataclass(frozen=True)
class Shard:
    """One Dask task: fetch these remote paths of this task."""

    index: int
    count: int
    settings: TaskSettings
    connection: ConnectionSettings = field(repr=False)
    paths: tuple[str, ...]
    manifest: Path
    # The task's record as the coordinator planned with it (manifest text).
    record_text: str = field(repr=False)

    def __repr__(self) -> str:  # what a Dask dashboard or log may show: no settings
        return f"Shard({self.settings.name} {self.index + 1}/{self.count}, {len(self.paths)} files)"


@dataclass
class ShardResult:
    index: int
    entries: list[Entry]
    report: TaskReport
    worker: str  # host:pid, for the progress lines


class ShardStore(ManifestStore):
    """The manifest as the coordinator planned with it; writes are collected, not made."""

    def __init__(self, path: Path, snapshot: Manifest) -> None:
        super().__init__(path)
        self._snapshot = snapshot
        self.entries: dict[str, Entry] = {}

    def load(self) -> Manifest:
        return self._snapshot

    def update(
        self,
        task: str,
        destination: str,
        upsert: Iterable[Entry] = (),
        remove: Iterable[str] = (),
    ) -> Manifest:
        for path in remove:
            self.entries.pop(path, None)
        for entry in upsert:
            self.entries[entry.source.path] = entry  # the latest wins, as in the file
        return self._snapshot

    def forget_task(self, task: str) -> Manifest:
        return self._snapshot


class _ShardSource(Source):
    """A session that lists only the shard's files (everything else passes through)."""

    def __init__(self, inner: Source, paths: frozenset[str]) -> None:
        self._inner = inner
        self._paths = paths

    @property
    def round_trip(self) -> float:
        return self._inner.round_trip

    @round_trip.setter
    def round_trip(self, value: float) -> None:
        self._inner.round_trip = value

    @property
    def request_timeout(self) -> float:
        return self._inner.request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float) -> None:
        self._inner.request_timeout = value

    def describe(self) -> str:
        return self._inner.describe()

    @property
    def block_size(self) -> int:
        return self._inner.block_size

    @property
    def max_open_handles(self) -> int:
        return self._inner.max_open_handles

    async def find(self, path: str, include: tuple[str, ...] | Selection) -> Listing:
        listing = await self._inner.find(path, include)
        files = tuple(file for file in listing.files if file.path in self._paths)
        return dataclasses.replace(listing, files=files)

    async def walk(
        self, folder: str, include: tuple[str, ...] | Selection
    ) -> AsyncIterator[RemoteFile]:
        async for file in self._inner.walk(folder, include):
            if file.path in self._paths:
                yield file

    async def remove(self, path: str) -> None:
        await self._inner.remove(path)

    async def move(self, path: str, new_path: str) -> None:
        await self._inner.move(path, new_path)

    async def open(self, file: RemoteFile) -> SourceReader:
        return await self._inner.open(file)

    async def sha256_digests(self, paths: list[str]) -> dict[str, str]:
        return await self._inner.sha256_digests(paths)

    async def drain(self) -> None:
        await self._inner.drain()


class ShardConnector(SourceConnector):
    def __init__(self, inner: SourceConnector, paths: frozenset[str]) -> None:
        self._inner = inner
        self._paths = paths

    def start(self) -> None:
        self._inner.start()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Source]:
        async with self._inner.session() as source:
            yield _ShardSource(source, self._paths)

    async def aclose(self) -> None:
        await self._inner.aclose()


def run_shard(shard: Shard) -> ShardResult:
    """The Dask task: run the engine over the shard's files; return what to record."""
    from ..sources.ssh import SSHConnector

    snapshot = loads(shard.record_text, name=f"{shard.manifest} (as planned)")
    store = ShardStore(shard.manifest, snapshot)

    async def run() -> TaskReport:
        connector = ShardConnector(SSHConnector(shard.connection), frozenset(shard.paths))
        try:
            return await run_task(shard.settings, connector, store=store, hold_lock=False)
        finally:
            await connector.aclose()

    report = asyncio.run(run())
    worker = f"{socket.gethostname()}:{os.getpid()}"
    return ShardResult(shard.index, list(store.entries.values()), report, worker)


async def warm_up() -> None:
    """Import what a shard needs (run on each worker while the coordinator plans; a
    coroutine, as Dask wants for a run it does not wait for)."""
    from ..engine import run  # noqa: F401
    from ..sources import ssh  # noqa: F401
