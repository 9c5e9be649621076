"""What the engine needs from a destination: the Sink interface.

A sink locks its destination for one run, opens resumable part writers that
accept bytes strictly in order and commit atomically (a final name never holds
half a file), reports what already sits at a final name, and extracts archives
through a staging area that commits all or nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from ..extract import ArchiveKind, ExtractLimits
from ..sources import RemoteFile


@dataclass(frozen=True)
class Held:
    """A file already at a final name."""

    size: int
    mtime: int


@dataclass(frozen=True)
class Extracted:
    """One regular file an extraction put in place, relative to the destination."""

    path: str
    size: int
    mtime: int
    sha256: str


class PartWriter(abc.ABC):
    """A file being written in order; committed under its final name only when complete."""

    #: Bytes already held from an earlier try or run (the download resumes there).
    offset: int = 0

    @abc.abstractmethod
    def held_prefix(self) -> Iterator[bytes]:
        """The bytes already held (to hash them on resume)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Append data at the current end."""

    @abc.abstractmethod
    async def commit(self, mtime: int) -> str:
        """Make the complete file durable under its final name; return that name."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop writing (after a failure): what is held stays, resumable."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Drop the partial file (its bytes cannot be trusted)."""


class RegionWriter(abc.ABC):
    """A file written in regions, in any order, by several connections at once.

    The optional capability behind segmented downloads (engine/segments.py): a
    sink that has it returns one from :meth:`Sink.open_regions`. The file is
    split into fixed segments [start, end); :attr:`held` says how many bytes of
    each an earlier try or run already holds (resume per segment).
    :meth:`checkpoint` makes the writes so far durable and records the
    progress given; it never claims bytes that were not written. A local file
    writes at offsets; an object store can map each segment to its own parts.
    """

    #: The segments, (start, end), in order; they cover the file exactly.
    segments: list[tuple[int, int]]
    #: Bytes held at the start of each segment (from an earlier try or run).
    held: list[int]

    @abc.abstractmethod
    async def write_at(self, offset: int, data: bytes) -> None:
        """Write data at offset (inside one segment)."""

    @abc.abstractmethod
    async def checkpoint(self, done: list[int]) -> None:
        """Make the writes durable, then record done (bytes held per segment)."""

    @abc.abstractmethod
    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes written so far (to hash the file; called in a thread)."""

    @abc.abstractmethod
    async def commit(self, mtime: int) -> str:
        """Make the complete file durable under its final name; return that name."""

    @abc.abstractmethod
    async def close(self, done: list[int]) -> None:
        """Stop writing (after a failure): record done; what is held stays, resumable."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Drop the partial file (its bytes cannot be trusted)."""


class Sink(abc.ABC):
    """One destination folder."""

    async def open_regions(
        self, relative: str, source: RemoteFile, segments: list[tuple[int, int]]
    ) -> RegionWriter | None:
        """A writer for relative in segments, resuming a partial file of the same source
        (whose recorded segments then win over segments); None when this sink cannot
        (the file is then fetched over one connection)."""
        return None

    @abc.abstractmethod
    def describe(self, relative: str = "") -> str:
        """A path in the destination, for messages."""

    @abc.abstractmethod
    def lock(self, task: str) -> AbstractContextManager[None]:
        """One run at a time per destination."""

    @abc.abstractmethod
    def held(self, relative: str) -> Held | None:
        """What sits at a final name (None: nothing, or not a regular file)."""

    @abc.abstractmethod
    def exists(self, relative: str) -> bool:
        """Whether anything (a file, a folder, a link) sits at relative."""

    @abc.abstractmethod
    def has_partial(self, relative: str) -> bool:
        """Whether a partial download of relative is kept from an earlier try."""

    @abc.abstractmethod
    async def open_part(self, relative: str, source: RemoteFile) -> PartWriter:
        """A writer for relative, resuming a partial file of the same source."""

    @abc.abstractmethod
    async def finish(self) -> None:
        """Make the commits of this run durable (e.g. sync folders)."""

    @abc.abstractmethod
    def remove(self, relative: str) -> None:
        """Remove a result (an archive that was extracted and is not kept)."""

    @abc.abstractmethod
    def extract_file(
        self,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
        before_install: Callable[[list[Extracted]], None] | None = None,
    ) -> list[Extracted]:
        """Extract the committed archive at relative beside it, all or nothing.

        owned: results of earlier runs that dataferry may replace even when
        overwrite is false (recorded in the manifest and unchanged since).
        """

    @abc.abstractmethod
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
        before_install: Callable[[list[Extracted]], None] | None = None,
    ) -> list[Extracted]:
        """Extract an archive arriving as stream (seekable forward), all or nothing.

        before_install hears every result (digests computed while writing) right
        before the first one becomes visible: the manifest's intent record.
        """

    @abc.abstractmethod
    def open_result(self, relative: str) -> BinaryIO:
        """Read a result back (verify)."""

    def free_space(self) -> int | None:
        """Bytes the destination can still take; None when unknown (the engine's
        free-space check is then skipped: an object store, say)."""
        return None

    def partial_bytes(self, relative: str) -> int:
        """Bytes of relative already held from an earlier try (they need no new space)."""
        return 0

    @abc.abstractmethod
    def archive_kind(self, relative: str) -> ArchiveKind | None:
        """The archive format of a committed file, None when it is no archive."""
