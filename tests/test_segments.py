"""Segmented downloads: one big file over N SSH connections, resumed per segment.

Against the real servers (``remote``: OpenSSH sshd and the embedded one),
through the fault proxy, which counts connections and the bytes it delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataferry import run_task
from dataferry._exceptions import TransientError
from dataferry.engine.segments import (
    MAX_SEGMENTS,
    SEGMENT_ALIGN,
    SEGMENT_MIN_BYTES,
    segment_count,
    split,
)
from dataferry.sinks.local import LocalPartWriter, part_meta_path, part_path
from dataferry.sinks.local_regions import first_segment_prefix, recorded_segments
from dataferry.sources import RemoteFile
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.memory import MemoryConnector, MemoryServer, MemorySource
from tests.support.remote import (
    Remote,
    env_through,
    random_bytes,
    run_args,
    run_cli,
    settings_for,
    through,
)

BIG = SEGMENT_MIN_BYTES + 3 * SEGMENT_ALIGN + 12345  # segmented, and not a round size


@given(size=st.integers(0, 2**40), count=st.integers(1, 32))
def test_split_covers_the_file_in_order(size: int, count: int) -> None:
    ranges = split(size, count)
    assert len(ranges) <= count
    position = 0
    for start, end in ranges:
        assert start == position and end > start
        assert start % SEGMENT_ALIGN == 0
        position = end
    assert position == size
    if size >= count * SEGMENT_ALIGN:
        assert len(ranges) == count


@given(size=st.integers(SEGMENT_MIN_BYTES, 2**44), connections=st.integers(2, 32))
def test_segments_are_a_multiple_of_the_connections(size: int, connections: int) -> None:
    count = segment_count(size, connections)
    assert count <= MAX_SEGMENTS
    if connections * (-(-size // (connections * (16 << 20)))) <= MAX_SEGMENTS:
        assert count % connections == 0


def test_side_file_checks() -> None:
    remote = RemoteFile("/d/f.bin", 10, 5)
    good = {"remote_path": "/d/f.bin", "size": 10, "mtime": 5, "segments": [[0, 4, 4], [4, 10, 2]]}
    assert recorded_segments(good, remote) == [(0, 4, 4), (4, 10, 2)]
    assert first_segment_prefix(good, remote) == 4
    for bad in (
        [[0, 4, 5], [4, 10, 0]],  # more done than the segment holds
        [[0, 4, 0], [5, 10, 0]],  # a gap
        [[0, 4, 0]],  # does not reach the end
        [[0, 4, True], [4, 10, 0]],
        "nonsense",
    ):
        record = {**good, "segments": bad}
        assert recorded_segments(record, remote) is None
        assert first_segment_prefix(record, remote) == 0  # a sequential resume trusts nothing
    assert recorded_segments({**good, "mtime": 6}, remote) is None  # another version
    assert first_segment_prefix({"remote_path": "/d/f.bin", "size": 10, "mtime": 5}, remote) is None


def test_sequential_resume_after_segments_keeps_only_the_first_segment(tmp_path: Path) -> None:
    """A segmented part later resumed over one connection (connections back to 1):
    the sparse rest of the file must not count as held."""
    size = 4 << 20
    remote = RemoteFile("/d/f.bin", size, 5)
    final = tmp_path / "f.bin"
    part_path(final).write_bytes(random_bytes(size, 1))
    state = {"remote_path": "/d/f.bin", "size": size, "mtime": 5}
    state["segments"] = [[0, 2 << 20, 1 << 20], [2 << 20, size, 2 << 20]]
    part_meta_path(final).write_text(json.dumps(state))
    writer = LocalPartWriter(final, remote)
    writer.open()
    try:
        assert writer.offset == 1 << 20
    finally:
        asyncio.run(writer.close())
    assert part_path(final).stat().st_size == 1 << 20


def test_four_connections_give_identical_bytes(remote: Remote, tmp_path: Path) -> None:
    data = random_bytes(BIG, 4)
    source = remote.root / "big.bin"
    source.write_bytes(data)
    save = tmp_path / "out" / "big.bin"
    with FaultProxy(remote.connection.port) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        settings = settings_for(remote.path(source), save, connections=4)
        report = asyncio.run(run_task(settings, connection))
        assert proxy.connections == 4  # the try's session and three more
    assert save.read_bytes() == data
    assert report.bytes_transferred == BIG
    assert not part_path(save).exists() and not part_meta_path(save).exists()


def test_small_files_spread_over_the_connections(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "many"
    folder.mkdir()
    expected = {f"f{k}.csv": random_bytes(200_000 + k, k) for k in range(12)}
    for name, data in expected.items():
        (folder / name).write_bytes(data)
    save = tmp_path / "out"
    with FaultProxy(remote.connection.port) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        settings = settings_for(remote.path(folder), save, connections=3)
        asyncio.run(run_task(settings, connection))
        assert proxy.connections == 3
    assert {p.name: p.read_bytes() for p in save.iterdir()} == expected


def test_one_connection_is_the_default(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "big.bin"
    source.write_bytes(random_bytes(BIG, 5))
    save = tmp_path / "big.bin"
    with FaultProxy(remote.connection.port) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        asyncio.run(run_task(settings_for(remote.path(source), save), connection))
        assert proxy.connections == 1
    assert save.read_bytes() == source.read_bytes()


def _segments_held(save: Path) -> list[int]:
    try:
        state = json.loads(part_meta_path(save).read_text())
    except (OSError, ValueError):
        return []
    return [done for _, _, done in state.get("segments", [])]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_stopped_run_resumes_each_segment(
    remote: Remote, tmp_path: Path, how: signal.Signals
) -> None:
    data = random_bytes(BIG, 6)
    source = remote.root / "big.bin"
    source.write_bytes(data)
    save = tmp_path / "big.bin"
    args = run_args(save, remote.path(source), "--connections", "4", "--retry_delay", "0")
    # 4 MB/s per connection: the first run is stopped once the segments hold 16 MiB.
    with FaultProxy(remote.connection.port, FaultPlan(rate=4 << 20)) as proxy:
        env = env_through(remote.env(), remote.connection, proxy.port, tmp_path)
        process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                held = _segments_held(save)
                if sum(held) >= 16 << 20:
                    break
                time.sleep(0.05)
            process.send_signal(how)
        finally:
            code = process.wait()
    # SIGTERM unwinds (exit 143) and records exactly what each segment holds.
    assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL)
    held = _segments_held(save)
    assert sum(held) >= 16 << 20, held
    assert sum(1 for done in held if done) >= 4, held  # four segments were under way at once
    assert not save.exists()
    with FaultProxy(remote.connection.port) as proxy:
        env = env_through(remote.env(), remote.connection, proxy.port, tmp_path)
        result = run_cli([*args, "--log-level", "INFO"], env, tmp_path)
        resent = proxy.bytes_to_client
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert save.read_bytes() == data
    # Only what the segments lacked crossed the wire again (plus SSH's own bytes).
    assert resent < BIG - sum(held) + (2 << 20), (resent, held)
    assert not part_path(save).exists() and not part_meta_path(save).exists()


@pytest.mark.parametrize("value", ["0", "33", "four", "-1", "2.5"])
def test_bad_connections_is_exit_2(tmp_path: Path, value: str) -> None:
    args = run_args(tmp_path / "f.bin", "/nowhere/f.bin", "--connections", value)
    env = {"REMOTE_HOST_ADDRESS": "127.0.0.1", "USERNAME": "nobody", "PATH": "/usr/bin:/bin"}
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--connections" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_connections_in_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "t": {
                    "file_save_path": str(tmp_path / "f.bin"),
                    "remote_file_path": "/f.bin",
                    "connections": 0,
                }
            }
        )
    )
    env = {"REMOTE_HOST_ADDRESS": "127.0.0.1", "USERNAME": "nobody", "PATH": "/usr/bin:/bin"}
    result = run_cli(["-m", "dataferry", "run", "t", "--config", str(config)], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "t.connections" in result.stderr and "Traceback" not in result.stderr


def test_resets_mid_segment_resume_to_identical_bytes(remote: Remote, tmp_path: Path) -> None:
    data = random_bytes(BIG, 7)
    source = remote.root / "big.bin"
    source.write_bytes(data)
    save = tmp_path / "big.bin"
    plan = FaultPlan(resets=3, reset_after=(2 << 20, 12 << 20), seed=3)
    with FaultProxy(remote.connection.port, plan) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        settings = settings_for(remote.path(source), save, connections=4, max_tries=6)
        report = asyncio.run(run_task(settings, connection))
        # Connections armed at once may each reset: at least the three planned.
        resets, delivered = proxy.resets_done, proxy.bytes_to_client
        assert resets >= 3
    assert report.tries > 1
    assert save.read_bytes() == data
    # Each retry resumed its segments: what crossed the wire again is at most
    # what was in flight when a connection broke, not the file from the start.
    assert delivered < BIG + resets * (12 << 20), (delivered, resets)


def test_sha256_verified_with_segments(sshd_server: object, tmp_path: Path) -> None:
    from tests.support.remote import sshd_connection
    from tests.support.sshd import OpenSSHServer

    assert isinstance(sshd_server, OpenSSHServer)
    connection = sshd_connection(sshd_server, tmp_path / "known_hosts")
    source = tmp_path / "remote" / "big.bin"
    source.parent.mkdir()
    source.write_bytes(random_bytes(BIG, 8))
    save = tmp_path / "out" / "big.bin"
    settings = settings_for(str(source), save, connections=3, verify="sha256")
    asyncio.run(run_task(settings, connection))
    assert save.read_bytes() == source.read_bytes()


class _OneConnectionOnly(MemoryConnector):
    """A server that takes one connection per user: later logins are refused."""

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[MemorySource]:
        if self.server.sessions >= 1:
            self.server.sessions += 1
            raise TransientError("cannot connect to memory: connection reset")
        async with super().session() as source:
            yield source


def test_connections_refused_mean_fewer_connections_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = MemoryServer(block_size=1 << 20)
    data = random_bytes(BIG, 9)
    server.put("/d/big.bin", data)
    save = tmp_path / "big.bin"
    settings = settings_for("/d/big.bin", save, connections=4, max_tries=1)
    with caplog.at_level(logging.WARNING, logger="dataferry.segments"):
        report = asyncio.run(run_task(settings, _OneConnectionOnly(server)))
    assert save.read_bytes() == data
    assert report.tries == 1
    assert server.sessions == 4  # the first, and three refused
    assert "could not open another connection" in caplog.text
