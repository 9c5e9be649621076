"""Segmented downloads into ``s3://``: each segment uploads its own multipart parts.

Against the real servers: SFTP (OpenSSH sshd or the embedded one) behind the
fault proxy, which counts connections, and SeaweedFS, whose part listing shows
what a killed run left stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataferry import run_task
from dataferry.engine.segments import SEGMENT_ALIGN, SEGMENT_MIN_BYTES, segment_count, split
from dataferry.sinks.s3.regions import MAX_SEGMENT_BYTES, part_aligned_segments
from dataferry.sinks.s3.writer import MAX_PARTS, PART_SIZE, part_size_for
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import (
    REPO,
    Remote,
    env_through,
    random_bytes,
    run_args,
    run_cli,
    settings_for,
    through,
)
from tests.support.s3 import SeaweedS3, keys, make_bucket, objects, uploads
from tests.support.sshd import free_port

BIG = SEGMENT_MIN_BYTES + 3 * SEGMENT_ALIGN + 12345  # segmented, and not a round size
PARTS = -(-BIG // PART_SIZE)


@given(size=st.integers(PART_SIZE + 1, 2**44), connections=st.integers(2, 32))
def test_segments_fall_on_part_boundaries(size: int, connections: int) -> None:
    part_size = part_size_for(size)
    proposed = split(size, segment_count(size, connections))
    segments = part_aligned_segments(size, proposed, part_size)
    position = 0
    for start, end in segments:
        assert start == position and end > start
        assert start % part_size == 0  # each segment owns whole parts
        assert end - start <= max(part_size, MAX_SEGMENT_BYTES)
        position = end
    assert position == size
    assert -(-size // part_size) <= MAX_PARTS  # S3's 10,000-part limit kept
    assert part_size >= 5 * 2**20  # S3's minimum for every part but the last


def test_four_connections_into_s3_are_byte_identical(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path, manifest_path: Path
) -> None:
    data = random_bytes(BIG, 41)
    source = remote.root / "big.bin"
    source.write_bytes(data)
    bucket = make_bucket(s3_env, f"seg-{free_port()}")
    with FaultProxy(remote.connection.port) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        settings = settings_for(
            remote.path(source), f"s3://{bucket}/in/big.bin", connections=4, verify="sha256"
        )
        report = asyncio.run(run_task(settings, connection))
        assert proxy.connections == 4  # the try's session and three more
    assert report.bytes_transferred == BIG
    assert objects(s3_env, bucket) == {"in/big.bin": data}
    assert uploads(s3_env, bucket) == []  # the one upload completed, none left behind
    # The sha256 computed in order from the bytes kept in memory (no read-back from S3).
    entry = json.loads(manifest_path.read_text())["tasks"]["t"]["files"][0]
    assert [r["sha256"] for r in entry["results"]] == [hashlib.sha256(data).hexdigest()]


def _stored_parts(server: SeaweedS3, bucket: str, key: str) -> int:
    client = server.client()
    stored = 0
    for upload in uploads(server, bucket):
        answer = client.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        stored += len(answer.get("Parts", []))
    return stored


@pytest.mark.parametrize("remote", ["embedded"], indirect=True)
@pytest.mark.parametrize("rerun_connections", ["4", "1"])
def test_kill_9_then_rerun_sends_only_missing_parts(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path, rerun_connections: str
) -> None:
    """The re-run over 1 connection reuses the same parts: the part layout does not
    depend on the segments."""
    data = random_bytes(BIG, 42)
    source = remote.root / "k.bin"
    source.write_bytes(data)
    bucket = make_bucket(s3_env, f"segk-{free_port()}")
    key = "k/k.bin"
    args = run_args(
        f"s3://{bucket}/{key}", remote.path(source), "--connections", "4", "--retry_delay", "0"
    )
    env = {**remote.env(), **s3_env.environment()}
    # 3 MB/s per connection: the run is killed once a few parts are stored.
    with FaultProxy(remote.connection.port, FaultPlan(rate=3 << 20)) as proxy:
        slow = env_through(env, remote.connection, proxy.port, tmp_path)
        process = subprocess.Popen(
            [sys.executable, *args],
            env=slow,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stored = 0
        visible: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None and stored < 3:
                stored = _stored_parts(s3_env, bucket, key)
                visible += keys(s3_env, bucket)
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
        assert proxy.connections >= 4
    assert 3 <= stored < PARTS, stored
    assert visible == [] and keys(s3_env, bucket) == []  # nothing visible before completion
    left = _stored_parts(s3_env, bucket, key)  # what the killed run left (uploads in flight end)
    rerun = [*args[:-4], "--connections", rerun_connections, "--retry_delay", "0"]
    again = run_cli([*rerun, "--log-level", "INFO"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    found = re.search(r"(\d+) part\(s\) uploaded, (\d+) already stored", again.stderr)
    assert found is not None, again.stderr
    sent, reused = int(found[1]), int(found[2])
    assert reused == left  # every stored part reused (same size and MD5), none sent again
    assert sent == PARTS - left
    assert objects(s3_env, bucket) == {key: data}
    assert uploads(s3_env, bucket) == []


def test_connections_ahead_of_the_prefix_wait_for_it(s3_env: SeaweedS3) -> None:
    """Bytes are kept until hashed; past the limit only the lowest unfinished segment
    writes, so memory stays bounded and the prefix always grows (real SeaweedFS)."""
    from dataferry.sinks.s3 import S3Sink
    from dataferry.sinks.s3.regions import S3RegionWriter
    from dataferry.sources import RemoteFile

    size = 4 * PART_SIZE + 5
    data = random_bytes(size, 43)
    bucket = make_bucket(s3_env, f"segw-{free_port()}")
    sink = S3Sink(f"s3://{bucket}")
    remote = RemoteFile("/d/w.bin", size, 7)

    async def scenario() -> None:
        writer = S3RegionWriter(sink, "w.bin", remote, [(0, 2 * PART_SIZE), (2 * PART_SIZE, size)])
        await writer.open()
        assert writer.segments == [(0, 2 * PART_SIZE), (2 * PART_SIZE, size)]
        writer.limit = PART_SIZE
        p = PART_SIZE
        await writer.write_at(2 * p, data[2 * p : 3 * p])  # ahead, under the limit: goes
        ahead = asyncio.ensure_future(writer.write_at(3 * p, data[3 * p : 3 * p + 1]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not ahead.done()  # a full part kept: the segment ahead waits
        await writer.write_at(0, data[:p])  # the lowest segment never waits
        assert writer.read_at(0, p) == data[:p]
        assert not ahead.done()
        await writer.write_at(p, data[p : 2 * p])  # the first segment is done
        await ahead  # now the lowest unfinished one
        await writer.write_at(3 * p + 1, data[3 * p + 1 :])
        hashed = bytearray(data[:p])
        while len(hashed) < size:
            chunk = writer.read_at(len(hashed), 3 << 20)
            assert chunk
            hashed += chunk
        assert hashed == data
        assert writer._retained == 0  # everything hashed is released
        await writer.commit(remote.mtime)

    asyncio.run(scenario())
    assert objects(s3_env, bucket) == {"w.bin": data}


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_512_mib_over_4_connections_in_bounded_memory(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    """Bytes ahead of the hashed prefix are bounded (RETAINED_PARTS): the process
    never holds the file (measured: ~250 MB peak RSS for 512 MiB)."""
    from tests.test_s3_runs import high_water_mark

    size = 512 << 20
    source = remote.root / "m.bin"
    block = random_bytes(1 << 20, 44)
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for n in range(size >> 20):
            chunk = block[n % 7 :] + block[: n % 7]  # no two MiB alike
            handle.write(chunk)
            digest.update(chunk)
    bucket = make_bucket(s3_env, f"segm-{free_port()}")
    args = run_args(f"s3://{bucket}/m.bin", remote.path(source), "--connections", "4")
    env = {**remote.env(), **s3_env.environment(), "PYTHONPATH": str(REPO / "src")}
    log = tmp_path.parent / f"{tmp_path.name}.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, *args], env=env, cwd=tmp_path, stderr=stderr)
        peak = 0
        while process.poll() is None:
            peak = max(peak, high_water_mark(process.pid))
            time.sleep(0.05)
    assert process.returncode == 0, log.read_text()
    assert 50 * 10**6 < peak < 350 * 10**6, f"peak RSS {peak / 1e6:.0f} MB"
    stored = s3_env.client().get_object(Bucket=bucket, Key="m.bin")["Body"]
    received = hashlib.sha256()
    while chunk := stored.read(1 << 20):
        received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()
