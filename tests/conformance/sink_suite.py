"""SinkSuite: what every Sink implementation must do, wherever it writes.

A subclass provides the ``sink_world`` fixture: a :class:`SinkWorld` holding
the sink under test, a way to make another sink on the same destination (what
a second run would open), and the smallest file the sink resumes.

Cases: a part writer resumes a partial file of the same source (offset equals
the bytes held, held_prefix yields exactly them, the rest completes the file)
and starts over for another source (other size, other mtime, other path);
nothing is visible under the final name before commit; commit makes the file
visible with the given mtime and exactly the bytes written, in nested folders
too, and replaces an earlier result; commit with too few or too many bytes
raises TransientError and leaves no final file; discard drops the partial
file; held()/exists()/has_partial()/remove() (exists also for a folder, held
only for a regular file); the lock: a second run on the same destination
waits while the first holds it, and goes on once it is released.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import threading
import time
from pathlib import Path

import pytest

from dataferry._exceptions import TransientError
from dataferry.sinks import Held, PartWriter, Sink
from dataferry.sources import RemoteFile

MTIME = 1_600_000_007
MIB = 1024 * 1024


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return hashlib.shake_256(f"sink-conformance-{seed}".encode()).digest(size)


class SinkWorld(abc.ABC):
    """A sink under test and its destination."""

    root: Path
    sink: Sink
    #: The smallest file whose partial download is kept for a resume.
    resume_min_bytes: int = 0
    #: False for a sink that keeps what it stored but cannot read it back before
    #: commit (an object store's multipart upload): a resumed writer starts at 0
    #: and must still give exactly the bytes written the second time.
    resumes_at_byte: bool = True

    @abc.abstractmethod
    def another_sink(self) -> Sink:
        """Another sink on the same destination (what a concurrent run would open)."""


def read_result(sink: Sink, relative: str) -> bytes:
    with sink.open_result(relative) as handle:
        return handle.read()


def held_prefix(writer: PartWriter) -> bytes:
    return b"".join(writer.held_prefix())


async def write_in_blocks(writer: PartWriter, data: bytes, block: int = 65_521) -> None:
    for offset in range(0, len(data), block):
        await writer.write(data[offset : offset + block])


class SinkSuite:
    """Test methods every Sink must pass; subclasses provide ``sink_world``."""

    @pytest.fixture
    def sink_world(self) -> SinkWorld:
        raise NotImplementedError("a SinkSuite subclass provides the sink_world fixture")

    @staticmethod
    def resumable(world: SinkWorld, data_size: int = MIB + 54_321) -> RemoteFile:
        """A source file big enough that the sink keeps its partial download."""
        return RemoteFile("/r/big.csv", max(data_size, world.resume_min_bytes + 54_321), MTIME)

    # -- part writers ---------------------------------------------------------

    def test_new_part_writer_starts_at_zero(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        source = RemoteFile("/r/a.csv", 100, MTIME)

        async def body() -> None:
            writer = await sink.open_part("a.csv", source)
            try:
                assert writer.offset == 0
                assert held_prefix(writer) == b""
            finally:
                await writer.close()

        asyncio.run(body())

    def test_resume_same_source(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        source = self.resumable(sink_world)
        data = random_bytes(source.size, 1)
        cut = 700_001

        async def body() -> None:
            writer = await sink.open_part("big.csv", source)
            await write_in_blocks(writer, data[:cut])
            await writer.close()
            assert sink.has_partial("big.csv")
            assert sink.held("big.csv") is None

            again = await sink.open_part("big.csv", source)
            restart = cut if sink_world.resumes_at_byte else 0
            assert again.offset == restart
            assert held_prefix(again) == data[:restart]
            await write_in_blocks(again, data[restart:])
            await again.commit(source.mtime)

        asyncio.run(body())
        assert read_result(sink, "big.csv") == data
        assert sink.held("big.csv") == Held(source.size, source.mtime)
        assert not sink.has_partial("big.csv")

    @pytest.mark.parametrize("change", ["size", "mtime", "path"])
    def test_resume_refused_for_another_source(self, sink_world: SinkWorld, change: str) -> None:
        sink = sink_world.sink
        source = self.resumable(sink_world)
        other = {
            # Bigger, so the bytes held would fit: only the source's identity differs.
            "size": RemoteFile(source.path, source.size + 10, source.mtime),
            "mtime": RemoteFile(source.path, source.size, source.mtime + 1),
            "path": RemoteFile("/r/elsewhere/big.csv", source.size, source.mtime),
        }[change]
        old = random_bytes(source.size, 2)
        new = random_bytes(other.size, 3)

        async def body() -> None:
            writer = await sink.open_part("big.csv", source)
            await write_in_blocks(writer, old[:500_000])
            await writer.close()

            again = await sink.open_part("big.csv", other)
            assert again.offset == 0
            assert held_prefix(again) == b""
            await write_in_blocks(again, new)
            await again.commit(other.mtime)

        asyncio.run(body())
        assert read_result(sink, "big.csv") == new  # nothing of the old bytes left
        assert sink.held("big.csv") == Held(other.size, other.mtime)

    def test_nothing_visible_before_commit(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        data = random_bytes(300_000, 4)
        source = RemoteFile("/r/a.csv", len(data), MTIME)

        async def body() -> None:
            writer = await sink.open_part("a.csv", source)
            try:
                await write_in_blocks(writer, data[:100_000])
                assert sink.held("a.csv") is None
                assert not sink.exists("a.csv")
                assert sink.has_partial("a.csv")
                await write_in_blocks(writer, data[100_000:])
                # Every byte written, still not committed.
                assert sink.held("a.csv") is None
                assert not sink.exists("a.csv")
                await writer.commit(source.mtime)
            finally:
                await writer.close()

        asyncio.run(body())
        assert sink.exists("a.csv")

    @pytest.mark.parametrize("relative", ["a.csv", "sub/deeper/b c ü.csv"])
    def test_commit_gives_exact_bytes_and_mtime(self, sink_world: SinkWorld, relative: str) -> None:
        sink = sink_world.sink
        data = random_bytes(1_234_567, 5)
        source = RemoteFile("/r/x.csv", len(data), MTIME)

        async def body() -> str:
            writer = await sink.open_part(relative, source)
            await write_in_blocks(writer, data, block=100_003)
            name = await writer.commit(MTIME + 42)  # the mtime given, not the source's
            await sink.finish()
            return name

        name = asyncio.run(body())
        assert name == sink.describe(relative)
        assert sink.held(relative) == Held(len(data), MTIME + 42)
        assert read_result(sink, relative) == data
        assert not sink.has_partial(relative)

    def test_commit_replaces_an_earlier_result(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        first, second = random_bytes(5000, 6), random_bytes(3000, 7)

        async def body() -> None:
            for n, data in enumerate((first, second)):
                source = RemoteFile("/r/a.csv", len(data), MTIME + n)
                writer = await sink.open_part("a.csv", source)
                await writer.write(data)
                await writer.commit(source.mtime)

        asyncio.run(body())
        assert read_result(sink, "a.csv") == second
        assert sink.held("a.csv") == Held(3000, MTIME + 1)

    @pytest.mark.parametrize("written", [0, 999, 1001], ids=["none", "short", "long"])
    def test_commit_with_wrong_size_raises_transient_error(
        self, sink_world: SinkWorld, written: int
    ) -> None:
        sink = sink_world.sink
        source = RemoteFile("/r/a.csv", 1000, MTIME)

        async def body() -> None:
            writer = await sink.open_part("a.csv", source)
            try:
                await writer.write(random_bytes(written, 8))
                with pytest.raises(TransientError) as caught:
                    await writer.commit(source.mtime)
                assert source.path in str(caught.value)
            finally:
                await writer.close()

        asyncio.run(body())
        assert sink.held("a.csv") is None
        assert not sink.exists("a.csv")

    def test_discard_drops_the_partial_file(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        source = self.resumable(sink_world)
        data = random_bytes(source.size, 9)

        async def body() -> None:
            writer = await sink.open_part("big.csv", source)
            await write_in_blocks(writer, data[:600_000])
            await writer.close()
            assert sink.has_partial("big.csv")
            writer.discard()
            assert not sink.has_partial("big.csv")
            again = await sink.open_part("big.csv", source)
            try:
                assert again.offset == 0
            finally:
                await again.close()

        asyncio.run(body())
        assert not sink.exists("big.csv")

    # -- what sits at a name ----------------------------------------------------

    def test_held_exists_has_partial_remove(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        assert sink.held("sub/a.csv") is None
        assert not sink.exists("sub/a.csv")
        assert not sink.exists("sub")
        assert not sink.has_partial("sub/a.csv")
        source = RemoteFile("/r/a.csv", 4, MTIME)

        async def body() -> None:
            writer = await sink.open_part("sub/a.csv", source)
            await writer.write(b"abcd")
            await writer.commit(MTIME)

        asyncio.run(body())
        assert sink.held("sub/a.csv") == Held(4, MTIME)
        assert sink.exists("sub/a.csv")
        assert not sink.has_partial("sub/a.csv")
        # A folder exists, but holds no file.
        assert sink.exists("sub")
        assert sink.held("sub") is None
        assert sink.archive_kind("sub/a.csv") is None

        sink.remove("sub/a.csv")
        assert sink.held("sub/a.csv") is None
        assert not sink.exists("sub/a.csv")

    # -- the lock -----------------------------------------------------------------

    def test_lock_is_held_by_one_run_at_a_time(self, sink_world: SinkWorld) -> None:
        first, second = sink_world.sink, sink_world.another_sink()
        entered = threading.Event()
        failure: list[BaseException] = []

        def second_run() -> None:
            try:
                with second.lock("second"):
                    entered.set()
            except BaseException as exc:  # reported to the test below
                failure.append(exc)

        with first.lock("first"):
            thread = threading.Thread(target=second_run, daemon=True)
            thread.start()
            # The second run waits while the first holds the destination.
            assert not entered.wait(0.5)
            assert thread.is_alive()
        started = time.monotonic()
        thread.join(10)
        assert not failure, failure
        assert entered.is_set(), "the second run did not get the lock once it was free"
        assert time.monotonic() - started < 5

    def test_lock_can_be_taken_again_after_release(self, sink_world: SinkWorld) -> None:
        sink = sink_world.sink
        with sink.lock("one"):
            pass
        with sink.lock("two"):
            pass
        with sink_world.another_sink().lock("three"):
            pass
