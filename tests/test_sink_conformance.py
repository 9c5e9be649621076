"""The Sink conformance suite (tests/conformance/sink_suite.py) run against each Sink:
the in-memory fake used by unit tests, and the local folder sink on tmp_path; for the
local sink also its bookkeeping (``.NAME.dataferry-part`` files gone after commit, kept
after a failure), resuming across sink instances (a new run), no resume below
RESUME_MIN_BYTES, and a lock wait that gives up with DestinationError."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dataferry._exceptions import DestinationError, TransientError
from dataferry.plan.names import is_bookkeeping
from dataferry.sinks import Held, Sink
from dataferry.sinks.local import (
    RESUME_MIN_BYTES,
    LocalSink,
    lock_path,
    part_meta_path,
    part_path,
)
from dataferry.sources import RemoteFile
from tests.conformance.sink_suite import (
    MTIME,
    SinkSuite,
    SinkWorld,
    held_prefix,
    random_bytes,
    write_in_blocks,
)
from tests.support.memory import MemorySink


class MemorySinkWorld(SinkWorld):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sink = MemorySink(root)

    def another_sink(self) -> Sink:
        return MemorySink(self.root)


class TestMemorySink(SinkSuite):
    @pytest.fixture
    def sink_world(self, tmp_path: Path) -> SinkWorld:
        return MemorySinkWorld(tmp_path / "out")


class LocalSinkWorld(SinkWorld):
    resume_min_bytes = RESUME_MIN_BYTES

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sink = LocalSink(root)

    def another_sink(self) -> Sink:
        return LocalSink(self.root)


def bookkeeping(root: Path) -> list[str]:
    return sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*") if is_bookkeeping(path.name)
    )


class TestLocalSink(SinkSuite):
    @pytest.fixture
    def sink_world(self, tmp_path: Path) -> SinkWorld:
        return LocalSinkWorld(tmp_path / "out")

    @pytest.mark.parametrize("size", [1000, RESUME_MIN_BYTES + 1])
    def test_bookkeeping_gone_after_commit(self, tmp_path: Path, size: int) -> None:
        root = tmp_path / "out"
        sink = LocalSink(root)
        data = random_bytes(size, 40)
        source = RemoteFile("/r/a b.csv", size, MTIME)
        final = root / "sub" / "a b.csv"

        async def body() -> None:
            writer = await sink.open_part("sub/a b.csv", source)
            await write_in_blocks(writer, data[: size // 2])
            assert part_path(final).is_file()
            assert part_path(final).name == ".a b.csv.dataferry-part"
            assert part_meta_path(final).exists() == (size >= RESUME_MIN_BYTES)
            await write_in_blocks(writer, data[size // 2 :])
            await writer.commit(MTIME)
            await sink.finish()

        asyncio.run(body())
        assert final.read_bytes() == data
        assert bookkeeping(root) == []
        assert sorted(p.name for p in root.rglob("*")) == ["a b.csv", "sub"]

    def test_failed_commit_keeps_the_partial_file(self, tmp_path: Path) -> None:
        root = tmp_path / "out"
        sink = LocalSink(root)
        source = RemoteFile("/r/big.csv", RESUME_MIN_BYTES + 10, MTIME)

        async def body() -> None:
            writer = await sink.open_part("big.csv", source)
            await writer.write(random_bytes(RESUME_MIN_BYTES, 41))
            with pytest.raises(TransientError):
                await writer.commit(MTIME)

        asyncio.run(body())
        assert not (root / "big.csv").exists()
        assert bookkeeping(root) == [".big.csv.dataferry-part", ".big.csv.dataferry-part.json"]

    def test_a_new_run_resumes_the_partial_file(self, tmp_path: Path) -> None:
        root = tmp_path / "out"
        source = RemoteFile("/r/big.csv", RESUME_MIN_BYTES + 4321, MTIME)
        data = random_bytes(source.size, 42)

        async def first_run() -> None:
            writer = await LocalSink(root).open_part("big.csv", source)
            await write_in_blocks(writer, data[:654_321])
            await writer.close()

        async def second_run() -> None:
            writer = await LocalSink(root).open_part("big.csv", source)
            assert writer.offset == 654_321
            assert held_prefix(writer) == data[:654_321]
            await write_in_blocks(writer, data[654_321:])
            await writer.commit(MTIME)

        asyncio.run(first_run())
        asyncio.run(second_run())
        assert (root / "big.csv").read_bytes() == data
        assert bookkeeping(root) == []

    def test_small_files_start_over(self, tmp_path: Path) -> None:
        root = tmp_path / "out"
        sink = LocalSink(root)
        source = RemoteFile("/r/small.csv", RESUME_MIN_BYTES - 1, MTIME)
        data = random_bytes(source.size, 43)

        async def body() -> None:
            writer = await sink.open_part("small.csv", source)
            await write_in_blocks(writer, data[:500_000])
            await writer.close()
            again = await sink.open_part("small.csv", source)
            assert again.offset == 0
            assert held_prefix(again) == b""
            await write_in_blocks(again, data)
            await again.commit(MTIME)

        asyncio.run(body())
        assert sink.held("small.csv") == Held(source.size, MTIME)
        assert (root / "small.csv").read_bytes() == data

    def test_lock_lives_outside_the_data_and_gives_up(self, tmp_path: Path) -> None:
        root = tmp_path / "out"
        root.mkdir()
        failure: list[BaseException] = []

        def second_run() -> None:
            try:
                with LocalSink(root).lock("second", wait=0.2):
                    pass
            except BaseException as exc:  # checked below
                failure.append(exc)

        with LocalSink(root).lock("first"):
            assert lock_path(root).exists()
            assert not root.is_relative_to(lock_path(root).parent)
            assert list(root.iterdir()) == []
            thread = threading.Thread(target=second_run)
            thread.start()
            thread.join(10)
        assert len(failure) == 1
        assert isinstance(failure[0], DestinationError)
        assert "another dataferry run" in str(failure[0])
        assert str(root) in str(failure[0])
