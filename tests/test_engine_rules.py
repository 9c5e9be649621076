"""The engine's rules, with the in-memory source and sink (no servers, no sockets).

Covers: a re-run skips files whose source and results are unchanged; a remote
file changed in size or mtime is fetched again; a result deleted locally is
fetched again; a result truncated locally is not up to date (a conflict "changed
since dataferry wrote it" with overwrite false, repaired with overwrite true);
overwrite false refuses a file dataferry did not write before any read on the
server (overwrite true replaces it); two remote files mapping to one local name
are refused (ConfigError naming both) before any read; transient failures are
retried up to max_tries, one session per try, then TransferError (exit 5); a
read failure mid-file resumes at the bytes held (the memory sink resumes any
size, the local sink files of RESUME_MIN_BYTES and more, restarting smaller
ones); --frozen refuses (FrozenError, exit 9) a remote with a new, missing or
changed file versus the manifest with nothing read or written, passes when
identical, and refuses a task the manifest has never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataferry import (
    ConfigError,
    FrozenError,
    OverwriteConflictError,
    TaskObserver,
    TransferError,
)
from dataferry._settings import TaskSettings
from dataferry.engine import TaskReport, run_task
from dataferry.engine.run import SinkFactory
from dataferry.plan import plan_files
from dataferry.plan.names import is_bookkeeping
from dataferry.sinks.local import RESUME_MIN_BYTES, LocalSink
from dataferry.sources import Listing, RemoteFile, Selection
from tests.conformance.source_suite import random_bytes
from tests.support.memory import (
    MemoryConnector,
    MemoryFile,
    MemoryServer,
    MemorySink,
    MemorySource,
)

MTIME = 1_700_000_000
BLOCK = 64 * 1024  # MemoryServer's default block size


class Destination:
    """A sink factory that keeps one MemorySink per folder across runs (a disk that stays)."""

    def __init__(self) -> None:
        self.sinks: dict[Path, MemorySink] = {}

    def __call__(self, root: Path) -> MemorySink:
        return self.sinks.setdefault(root, MemorySink(root))

    def files(self, root: Path) -> dict[str, tuple[bytes, int]]:
        """What the folder holds: relative name -> (bytes, mtime)."""
        sink = self.sinks.get(root)
        if sink is None:
            return {}
        return {name: (found.data, found.mtime) for name, found in sink.files.items()}


@dataclass
class Recorder(TaskObserver):
    """Where each download started; optionally heals the server before the next try."""

    starts: list[tuple[str, int]] = field(default_factory=list)
    retries: int = 0
    heal: MemoryServer | None = None

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        self.starts.append((remote_path, offset))

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        self.retries += 1
        if self.heal is not None:
            self.heal.fail_reads_after = None


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def server() -> MemoryServer:
    return MemoryServer()


@pytest.fixture
def destination() -> Destination:
    return Destination()


def settings(tmp_path: Path, **values: object) -> TaskSettings:
    return TaskSettings.model_validate(
        {
            "name": "t",
            "file_save_path": tmp_path / "out",
            "remote_file_path": "/r",
            "manifest": tmp_path / "m.json",
            "retry_delay": 0,
            **values,
        }
    )


def run(
    task: TaskSettings,
    server: MemoryServer,
    sink_factory: SinkFactory,
    observer: TaskObserver | None = None,
    connector: MemoryConnector | None = None,
) -> TaskReport:
    return asyncio.run(
        run_task(
            task,
            connector or MemoryConnector(server),
            observer,
            sink_factory=sink_factory,
        )
    )


def two_files(server: MemoryServer) -> dict[str, bytes]:
    data = {"a.csv": random_bytes(100_001, 1), "b.csv": random_bytes(70_007, 2)}
    for name, content in data.items():
        server.put(f"/r/{name}", content, MTIME)
    return data


def first_run(
    tmp_path: Path, server: MemoryServer, destination: Destination, **values: object
) -> dict[str, bytes]:
    """Two remote files fetched once; the server's counters reset afterwards."""
    data = two_files(server)
    report = run(settings(tmp_path, **values), server, destination)
    out = tmp_path / "out"
    assert report.downloaded == [out / "a.csv", out / "b.csv"]
    assert destination.files(out) == {name: (content, MTIME) for name, content in data.items()}
    server.reads = server.sessions = 0
    return data


# -- skipping and fetching again -----------------------------------------------------


def test_rerun_skips_unchanged_files(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = first_run(tmp_path, server, destination)
    report = run(settings(tmp_path), server, destination)
    assert report.up_to_date == [out / "a.csv", out / "b.csv"]
    assert report.downloaded == []
    assert report.bytes_transferred == 0
    assert server.reads == 0
    assert destination.files(out) == {name: (content, MTIME) for name, content in data.items()}


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_changed_remote_file_is_fetched_again(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination, change: str
) -> None:
    data = first_run(tmp_path, server, destination)
    if change == "size":
        new, mtime = random_bytes(70_008, 3), MTIME
    else:
        new, mtime = data["b.csv"], MTIME + 60
    server.put("/r/b.csv", new, mtime)
    # overwrite is false: b.csv is dataferry's own (recorded, unchanged), so it may replace it.
    report = run(settings(tmp_path), server, destination)
    assert report.downloaded == [out / "b.csv"]
    assert report.up_to_date == [out / "a.csv"]
    assert destination.files(out)["b.csv"] == (new, mtime)
    assert destination.files(out)["a.csv"] == (data["a.csv"], MTIME)


def test_result_deleted_locally_is_fetched_again(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = first_run(tmp_path, server, destination)
    del destination(out).files["a.csv"]
    report = run(settings(tmp_path), server, destination)
    assert report.downloaded == [out / "a.csv"]
    assert report.up_to_date == [out / "b.csv"]
    assert destination.files(out)["a.csv"] == (data["a.csv"], MTIME)


def test_truncated_result_is_a_conflict_without_overwrite(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = first_run(tmp_path, server, destination)
    destination(out).files["a.csv"] = MemoryFile(data["a.csv"][:1000], MTIME)
    before = destination.files(out)
    with pytest.raises(OverwriteConflictError) as caught:
        run(settings(tmp_path), server, destination)
    assert caught.value.exit_code == 7
    assert f"{destination(out).describe('a.csv')} (changed since dataferry wrote it)" in str(
        caught.value
    )
    assert "b.csv" not in str(caught.value)
    assert server.reads == 0
    assert destination.files(out) == before


def test_truncated_result_is_repaired_with_overwrite(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = first_run(tmp_path, server, destination)
    destination(out).files["a.csv"] = MemoryFile(data["a.csv"][:1000], MTIME)
    report = run(settings(tmp_path, overwrite=True), server, destination)
    assert out / "a.csv" not in report.up_to_date
    assert report.downloaded == [out / "a.csv"]
    assert report.up_to_date == [out / "b.csv"]
    assert destination.files(out)["a.csv"] == (data["a.csv"], MTIME)


# -- refusing before transferring --------------------------------------------------------


def test_overwrite_false_refuses_a_file_dataferry_did_not_write(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    two_files(server)
    destination(out).files["b.csv"] = MemoryFile(b"the user's own", MTIME)
    task = settings(tmp_path)
    with pytest.raises(OverwriteConflictError) as caught:
        run(task, server, destination)
    message = str(caught.value)
    assert caught.value.exit_code == 7
    assert destination(out).describe("b.csv") in message
    assert "a.csv" not in message
    assert "changed since dataferry wrote it" not in message
    assert server.reads == 0
    assert destination.files(out) == {"b.csv": (b"the user's own", MTIME)}
    assert destination(out).parts == {}
    assert task.manifest is not None and not task.manifest.exists()


def test_overwrite_true_replaces_a_file_dataferry_did_not_write(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = two_files(server)
    destination(out).files["b.csv"] = MemoryFile(b"the user's own", MTIME)
    report = run(settings(tmp_path, overwrite=True), server, destination)
    assert report.downloaded == [out / "a.csv", out / "b.csv"]
    assert destination.files(out) == {name: (content, MTIME) for name, content in data.items()}


def test_a_tree_keeps_its_shape_when_planning(tmp_path: Path) -> None:
    listing = Listing(
        "/r",
        True,
        (RemoteFile("/r/a.csv", 1, MTIME), RemoteFile("/r/sub/a.csv", 2, MTIME)),
    )
    plan = plan_files(settings(tmp_path), listing)
    assert [item.relative for item in plan.files] == ["a.csv", "sub/a.csv"]


def test_two_remote_files_for_one_local_name_are_refused_when_planning(tmp_path: Path) -> None:
    # A hostile server may list one name twice.
    listing = Listing(
        "/r",
        True,
        (RemoteFile("/r/a.csv", 1, MTIME), RemoteFile("/r/a.csv", 2, MTIME)),
    )
    with pytest.raises(ConfigError) as caught:
        plan_files(settings(tmp_path), listing)
    assert caught.value.exit_code == 2
    assert "/r/a.csv" in str(caught.value)


class RecursiveSource(MemorySource):
    """Lists every file twice (a hostile server's READDIR may)."""

    async def find(self, path: str, include: tuple[str, ...] | Selection) -> Listing:
        listing = await super().find(path, include)
        twice = tuple(file for file in listing.files for _ in range(2))
        return Listing(path, True, twice)


class RecursiveConnector(MemoryConnector):
    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[MemorySource]:
        self.server.sessions += 1
        yield RecursiveSource(self.server)


def test_two_remote_files_for_one_local_name_are_refused_before_transferring(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    server.put("/r/a.csv", b"top", MTIME)
    server.put("/r/b.csv", b"other", MTIME)
    with pytest.raises(ConfigError) as caught:
        run(settings(tmp_path), server, destination, connector=RecursiveConnector(server))
    assert "/r/a.csv" in str(caught.value)
    assert server.reads == 0
    assert destination.files(out) == {}


# -- retries and resuming ---------------------------------------------------------------


@pytest.mark.parametrize("max_tries", [1, 3])
def test_failing_connections_are_retried_up_to_max_tries(
    tmp_path: Path, server: MemoryServer, destination: Destination, max_tries: int
) -> None:
    two_files(server)
    server.fail_sessions = 100
    recorder = Recorder()
    with pytest.raises(TransferError) as caught:
        run(settings(tmp_path, max_tries=max_tries), server, destination, recorder)
    assert caught.value.exit_code == 5
    plural = "try" if max_tries == 1 else "tries"
    assert f"failed after {max_tries} {plural}" in str(caught.value)
    assert "connection refused" in str(caught.value)
    assert server.sessions == max_tries
    assert recorder.retries == max_tries - 1
    assert server.reads == 0


def test_transient_failures_then_success(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = two_files(server)
    server.fail_sessions = 2
    report = run(settings(tmp_path, max_tries=3), server, destination)
    assert server.sessions == 3
    assert report.tries == 3
    assert destination.files(out) == {name: (content, MTIME) for name, content in data.items()}


def test_reads_that_always_fail_end_in_transfer_error(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    two_files(server)
    server.fail_reads_after = 0
    with pytest.raises(TransferError, match="connection lost while reading"):
        run(settings(tmp_path, max_tries=4), server, destination)
    assert server.sessions == 4
    assert destination.files(out) == {}


def test_each_try_resumes_where_the_last_one_stopped(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = random_bytes(4 * BLOCK + 12_345, 5)  # five blocks
    server.put("/r/a.csv", data, MTIME)
    server.fail_reads_after = 2  # each session serves two reads, then loses its connection
    recorder = Recorder()
    report = run(settings(tmp_path, max_tries=5), server, destination, recorder)
    assert recorder.starts == [("/r/a.csv", 0), ("/r/a.csv", 2 * BLOCK), ("/r/a.csv", 4 * BLOCK)]
    assert report.tries == 3
    assert server.reads == 6  # no block read twice, and one read at the listed end
    assert destination.files(out) == {"a.csv": (data, MTIME)}


@pytest.mark.parametrize(
    ("sink", "size", "resumed_at"),
    [
        pytest.param("memory", 300_017, 2 * BLOCK, id="memory-small"),
        pytest.param("local", RESUME_MIN_BYTES + 100_003, 2 * BLOCK, id="local-big"),
        pytest.param("local", RESUME_MIN_BYTES - 1, 0, id="local-small-restarts"),
    ],
)
def test_read_failure_mid_file_resumes_at_the_bytes_held(
    tmp_path: Path,
    out: Path,
    server: MemoryServer,
    destination: Destination,
    sink: str,
    size: int,
    resumed_at: int,
) -> None:
    data = random_bytes(size, 6)
    server.put("/r/a.csv", data, MTIME)
    server.fail_reads_after = 2  # the first session only: the recorder heals the server
    recorder = Recorder(heal=server)
    factory = destination if sink == "memory" else LocalSink
    report = run(settings(tmp_path, max_tries=2), server, factory, recorder)
    assert recorder.starts == [("/r/a.csv", 0), ("/r/a.csv", resumed_at)]
    assert report.tries == 2
    assert report.bytes_transferred == size - resumed_at
    if sink == "memory":
        assert destination.files(out) == {"a.csv": (data, MTIME)}
    else:
        assert (out / "a.csv").read_bytes() == data
        assert [p.name for p in out.iterdir() if is_bookkeeping(p.name)] == []


# -- --frozen ---------------------------------------------------------------------------


def _drift(server: MemoryServer, kind: str) -> str:
    if kind == "new":
        server.put("/r/c.csv", b"new", MTIME)
        return "/r/c.csv is new"
    if kind == "missing":
        del server.files["/r/b.csv"]
        return "/r/b.csv is gone"
    if kind == "size":
        server.put("/r/b.csv", b"shorter", MTIME)
        return "/r/b.csv changed (size 70007 -> 7"
    data, _ = server.files["/r/b.csv"]
    server.put("/r/b.csv", data, MTIME + 1)
    return f"/r/b.csv changed (size 70007 -> 70007, mtime {MTIME} -> {MTIME + 1})"


@pytest.mark.parametrize("kind", ["new", "missing", "size", "mtime"])
def test_frozen_refuses_a_remote_that_differs_from_the_manifest(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination, kind: str
) -> None:
    first_run(tmp_path, server, destination)
    task = settings(tmp_path, frozen=True)
    assert task.manifest is not None
    pinned = task.manifest.read_text()
    held = destination.files(out)
    expected = _drift(server, kind)
    with pytest.raises(FrozenError) as caught:
        run(task, server, destination)
    assert caught.value.exit_code == 9
    assert expected in str(caught.value)
    assert "nothing was written" in str(caught.value)
    assert server.reads == 0
    assert destination.files(out) == held
    assert destination(out).parts == {}
    assert task.manifest.read_text() == pinned


def test_frozen_passes_when_the_remote_is_identical(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    data = first_run(tmp_path, server, destination)
    task = settings(tmp_path, frozen=True)
    assert task.manifest is not None
    pinned = task.manifest.read_text()
    report = run(task, server, destination)
    assert report.up_to_date == [out / "a.csv", out / "b.csv"]
    assert server.reads == 0
    assert task.manifest.read_text() == pinned
    # A deleted result is fetched again from the identical remote (checked against the pin).
    del destination(out).files["a.csv"]
    report = run(task, server, destination)
    assert report.downloaded == [out / "a.csv"]
    assert destination.files(out)["a.csv"] == (data["a.csv"], MTIME)
    assert task.manifest.read_text() == pinned


def test_frozen_refuses_a_task_the_manifest_never_recorded(
    tmp_path: Path, out: Path, server: MemoryServer, destination: Destination
) -> None:
    two_files(server)
    with pytest.raises(FrozenError, match="no record of this task"):
        run(settings(tmp_path, frozen=True), server, destination)
    assert server.reads == 0
    assert destination.files(out) == {}
