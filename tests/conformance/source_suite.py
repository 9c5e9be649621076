"""SourceSuite: what every Source implementation must do, whatever its protocol.

A subclass provides the ``source_world`` fixture: a :class:`SourceWorld` that
puts files with given bytes and mtimes on the server side, shrinks them, makes
the server answer reads short, and opens sessions through a fresh
SourceConnector. Each test opens one session with :func:`in_session`.

Cases: finding a file (size, mtime; include does not apply to a file named
explicitly); finding a folder (only regular files that match include, sorted,
subfolders never listed; walk agrees); a missing path raises RemotePathError
naming it; read_range of the head, middle, tail, across server blocks and past
the end; stream over the whole file, over a suffix (a resume) and over nothing,
with small blocks and several requests in flight, yielding exactly the bytes,
in order, one full block at a time; an empty file; a server answering short
still gives every byte; a file that shrank after it was listed makes stream
raise TransientError; several files streamed at once on one session; names
with spaces, quotes and non-ASCII characters; the session's facts (block size,
handle limit, round trip); server-side sha256 digests (or ConfigError).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import pytest

from dataferry._exceptions import ConfigError, RemotePathError, TransientError
from dataferry.sources import RemoteFile, Source, SourceConnector, SourceReader

T = TypeVar("T")

MTIME = 1_600_000_007
MIB = 1024 * 1024


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return hashlib.shake_256(f"conformance-{seed}".encode()).digest(size)


class SourceWorld(abc.ABC):
    """The server side of a Source under test, and the way to reach it."""

    #: Whether sessions compute sha256 digests on the server (else ConfigError).
    computes_digests: bool = False

    @abc.abstractmethod
    def connector(self) -> SourceConnector:
        """A new connector (connectors may hold futures bound to one event loop)."""

    @abc.abstractmethod
    def put(self, relative: str, data: bytes, mtime: int = MTIME) -> str:
        """Put a regular file at relative (folders made as needed); return its remote path."""

    @abc.abstractmethod
    def path(self, relative: str) -> str:
        """The remote path of relative ("" is the test's own folder)."""

    @abc.abstractmethod
    def shrink(self, relative: str, size: int) -> None:
        """Cut the file at relative down to size bytes (it changed after listing)."""

    @abc.abstractmethod
    def short_replies(self) -> AbstractContextManager[int]:
        """While entered, the server answers each read with at most N bytes; yields N."""


def in_session(world: SourceWorld, body: Callable[[Source], Awaitable[T]]) -> T:
    """Run body with one session of a fresh connector, on a fresh event loop."""

    async def main() -> T:
        connector = world.connector()
        try:
            async with connector.session() as source:
                return await body(source)
        finally:
            await connector.aclose()

    return asyncio.run(main())


async def collect(
    reader: SourceReader, start: int, end: int, *, block_size: int, requests_in_flight: int
) -> list[bytes]:
    chunks = []
    blocks = reader.stream(start, end, block_size=block_size, requests_in_flight=requests_in_flight)
    try:
        async for chunk in blocks:
            chunks.append(chunk)
    finally:
        await blocks.aclose()
    return chunks


def block_lengths(start: int, end: int, block_size: int) -> list[int]:
    """The chunk sizes stream must yield: full blocks, the last one shorter."""
    return [min(block_size, end - offset) for offset in range(start, end, block_size)]


class SourceSuite:
    """Test methods every Source must pass; subclasses provide ``source_world``."""

    @pytest.fixture
    def source_world(self) -> SourceWorld:
        raise NotImplementedError("a SourceSuite subclass provides the source_world fixture")

    # -- find ---------------------------------------------------------------

    def test_find_file(self, source_world: SourceWorld) -> None:
        data = random_bytes(12_345, 1)
        path = source_world.put("one.csv", data, mtime=MTIME)

        async def body(source: Source) -> None:
            listing = await source.find(path, ("*.csv",))
            assert not listing.is_folder
            assert listing.path == path
            assert listing.files == (RemoteFile(path, len(data), MTIME),)
            assert listing.files[0].name == "one.csv"
            # include filters a folder's files, not a file named explicitly.
            named = await source.find(path, ("*.zip",))
            assert named.files == listing.files

        in_session(source_world, body)

    def test_find_folder_lists_matching_regular_files_sorted(
        self, source_world: SourceWorld
    ) -> None:
        # Put in an order that is not the sorted one.
        c = source_world.put("data/c.csv", b"ccc", mtime=MTIME + 3)
        b = source_world.put("data/b.txt", b"bb", mtime=MTIME + 2)
        a = source_world.put("data/a.csv", b"a", mtime=MTIME + 1)
        source_world.put("data/sub/d.csv", b"dddd")
        source_world.put("data/folder.csv/e.csv", b"eeeee")  # a folder matching *.csv
        folder = source_world.path("data")

        async def body(source: Source) -> None:
            listing = await source.find(folder, ("*.csv",))
            assert listing.is_folder
            assert listing.path == folder
            assert listing.files == (
                RemoteFile(a, 1, MTIME + 1),
                RemoteFile(c, 3, MTIME + 3),
            )
            both = await source.find(folder, ("*.txt", "*.csv"))
            assert [f.path for f in both.files] == [a, b, c]
            walked = [f async for f in source.walk(folder, ("*.txt", "*.csv"))]
            assert tuple(walked) == both.files

        in_session(source_world, body)

    def test_find_folder_without_matches(self, source_world: SourceWorld) -> None:
        source_world.put("data/notes.txt", b"notes")
        folder = source_world.path("data")

        async def body(source: Source) -> None:
            listing = await source.find(folder, ("*.csv",))
            assert listing.is_folder
            assert listing.files == ()

        in_session(source_world, body)

    def test_missing_path_raises_remote_path_error(self, source_world: SourceWorld) -> None:
        source_world.put("data/here.csv", b"here")
        missing = source_world.path("nowhere")
        missing_inside = source_world.path("data/gone.csv")

        async def body(source: Source) -> None:
            for path in (missing, missing_inside):
                with pytest.raises(RemotePathError) as caught:
                    await source.find(path, ("*.csv",))
                assert path in str(caught.value)
            with pytest.raises(RemotePathError) as caught:
                await source.open(RemoteFile(missing_inside, 10, MTIME))
            assert missing_inside in str(caught.value)

        in_session(source_world, body)

    # -- read_range -----------------------------------------------------------

    def test_read_range(self, source_world: SourceWorld) -> None:
        data = random_bytes(300_001, 2)  # more than one server block
        size = len(data)
        path = source_world.put("ranges.csv", data)

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            reader = await source.open(file)
            try:
                assert reader.file == file
                assert await reader.read_range(0, 1000) == data[:1000]
                assert await reader.read_range(123_457, 65_537) == data[123_457 : 123_457 + 65_537]
                assert await reader.read_range(size - 100, 100) == data[-100:]
                assert await reader.read_range(0, size) == data
                # Past the end: fewer bytes, then none.
                assert await reader.read_range(size - 10, 100) == data[-10:]
                assert await reader.read_range(size, 10) == b""
                assert await reader.read_range(size + 1000, 10) == b""
            finally:
                reader.close_later()

        in_session(source_world, body)

    def test_empty_file(self, source_world: SourceWorld) -> None:
        path = source_world.put("empty.csv", b"")

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            assert file.size == 0
            reader = await source.open(file)
            try:
                assert await reader.read_range(0, 10) == b""
                assert await collect(reader, 0, 0, block_size=4096, requests_in_flight=4) == []
            finally:
                reader.close_later()

        in_session(source_world, body)

    # -- stream ---------------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "block_size", "requests_in_flight"),
        [
            pytest.param(0, 32_771, 8, id="whole"),
            pytest.param(777_777, 32_771, 8, id="suffix"),
            pytest.param(1, 65_536, 3, id="suffix-from-1"),
            pytest.param(0, 4_099, 64, id="tiny-blocks"),
        ],
    )
    def test_stream_yields_exact_bytes_in_order(
        self, source_world: SourceWorld, start: int, block_size: int, requests_in_flight: int
    ) -> None:
        data = random_bytes(2 * MIB + 12_345, 3)  # no multiple of any block size here
        path = source_world.put("stream.csv", data)

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            reader = await source.open(file)
            try:
                chunks = await collect(
                    reader,
                    start,
                    file.size,
                    block_size=block_size,
                    requests_in_flight=requests_in_flight,
                )
                # Nothing at the end: the range is empty.
                rest = await collect(
                    reader, file.size, file.size, block_size=block_size, requests_in_flight=4
                )
            finally:
                reader.close_later()
            assert b"".join(chunks) == data[start:]
            assert [len(c) for c in chunks] == block_lengths(start, file.size, block_size)
            assert rest == []

        in_session(source_world, body)

    def test_short_replies_still_give_every_byte(self, source_world: SourceWorld) -> None:
        data = random_bytes(3 * MIB - 1234, 4)
        path = source_world.put("short.csv", data)

        async def body(source: Source, cap: int) -> None:
            (file,) = (await source.find(path, ("*",))).files
            reader = await source.open(file)
            try:
                first = await reader.read(0, 3 * cap)
                assert 0 < len(first) <= cap, "the world's server did not answer short"
                assert first == data[: len(first)]
                assert await reader.read_range(5, 3 * cap + 5) == data[5 : 3 * cap + 10]
                block = 2 * cap + 1001
                chunks = await collect(
                    reader, 777, file.size, block_size=block, requests_in_flight=6
                )
            finally:
                reader.close_later()
            assert b"".join(chunks) == data[777:]
            assert [len(c) for c in chunks] == block_lengths(777, file.size, block)

        with source_world.short_replies() as cap:
            in_session(source_world, lambda source: body(source, cap))

    def test_file_that_shrank_after_listing_raises_transient_error(
        self, source_world: SourceWorld
    ) -> None:
        data = random_bytes(MIB + 5, 5)
        path = source_world.put("shrinks.csv", data)

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            assert file.size == len(data)
            source_world.shrink("shrinks.csv", 600_001)
            reader = await source.open(file)
            try:
                with pytest.raises(TransientError) as caught:
                    await collect(reader, 0, file.size, block_size=65_536, requests_in_flight=4)
            finally:
                reader.close_later()
            assert path in str(caught.value)

        in_session(source_world, body)

    def test_stream_stopped_early_leaves_the_session_usable(
        self, source_world: SourceWorld
    ) -> None:
        data = random_bytes(MIB + 3, 6)
        path = source_world.put("stopped.csv", data)

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            reader = await source.open(file)
            try:
                blocks = reader.stream(0, file.size, block_size=16_384, requests_in_flight=16)
                first = [await anext(blocks) for _ in range(3)]
                await blocks.aclose()  # many reads still in flight: cancelled
                assert b"".join(first) == data[: 3 * 16_384]
                assert await reader.read_range(500_000, 1000) == data[500_000:501_000]
                again = await collect(reader, 0, file.size, block_size=65_536, requests_in_flight=8)
            finally:
                reader.close_later()
            assert b"".join(again) == data

        in_session(source_world, body)

    def test_file_that_grew_after_listing_gives_the_listed_bytes(
        self, source_world: SourceWorld
    ) -> None:
        data = random_bytes(300_000, 7)
        path = source_world.put("grows.csv", data[:200_000])

        async def body(source: Source) -> None:
            (file,) = (await source.find(path, ("*",))).files
            source_world.put("grows.csv", data)
            reader = await source.open(file)
            try:
                chunks = await collect(
                    reader, 0, file.size, block_size=30_000, requests_in_flight=4
                )
            finally:
                reader.close_later()
            assert b"".join(chunks) == data[:200_000]

        in_session(source_world, body)

    def test_several_files_streamed_at_once(self, source_world: SourceWorld) -> None:
        contents = {f"many/{n}.csv": random_bytes(200_000 + 7 * n, 10 + n) for n in range(4)}
        paths = {rel: source_world.put(rel, data) for rel, data in contents.items()}

        async def body(source: Source) -> None:
            listing = await source.find(source_world.path("many"), ("*.csv",))
            readers = [await source.open(file) for file in listing.files]
            try:
                got = await asyncio.gather(
                    *(
                        collect(r, 0, r.file.size, block_size=16_411, requests_in_flight=5)
                        for r in readers
                    )
                )
            finally:
                for reader in readers:
                    reader.close_later()
            by_path = {
                r.file.path: b"".join(chunks) for r, chunks in zip(readers, got, strict=True)
            }
            assert by_path == {paths[rel]: data for rel, data in contents.items()}

        in_session(source_world, body)

    # -- names, facts, digests -------------------------------------------------

    NAMES = ("with space.csv", "two  spaces .csv", "naïve café 日本語.csv", "it's.csv")

    def test_names_with_spaces_quotes_and_unicode(self, source_world: SourceWorld) -> None:
        contents = {name: random_bytes(1000 + n, 20 + n) for n, name in enumerate(self.NAMES)}
        paths = {name: source_world.put(f"names/{name}", data) for name, data in contents.items()}

        async def body(source: Source) -> None:
            listing = await source.find(source_world.path("names"), ("*.csv",))
            assert [f.path for f in listing.files] == sorted(paths.values())
            assert {f.name for f in listing.files} == set(self.NAMES)
            for name, data in contents.items():
                (file,) = (await source.find(paths[name], ("*.csv",))).files
                assert file == RemoteFile(paths[name], len(data), MTIME)
                reader = await source.open(file)
                try:
                    assert await reader.read_range(0, file.size) == data
                finally:
                    reader.close_later()

        in_session(source_world, body)

    def test_session_facts(self, source_world: SourceWorld) -> None:
        path = source_world.put("facts.csv", b"facts")

        async def body(source: Source) -> None:
            assert source.block_size > 0
            assert source.max_open_handles >= 0
            assert source.describe()
            await source.find(path, ("*",))
            # A request has been seen: the round trip is measured.
            assert 0 <= source.round_trip < 60

        in_session(source_world, body)

    def test_sha256_digests(self, source_world: SourceWorld) -> None:
        contents = {name: random_bytes(5000 + n, 30 + n) for n, name in enumerate(self.NAMES)}
        paths = {name: source_world.put(f"sums/{name}", data) for name, data in contents.items()}
        ordered = [paths[name] for name in self.NAMES]

        async def body(source: Source) -> dict[str, str]:
            return await source.sha256_digests(ordered)

        if not source_world.computes_digests:
            with pytest.raises(ConfigError, match="sha256"):
                in_session(source_world, body)
            return
        digests = in_session(source_world, body)
        assert digests == {
            paths[name]: hashlib.sha256(data).hexdigest() for name, data in contents.items()
        }
