"""The S3 sink against a real S3 server (SeaweedFS on loopback, tests/support/s3.py).

The Sink conformance suite, then what is particular to object storage: nothing
visible before CompleteMultipartUpload, parts of a cut upload reused by the next
run (and their bytes checked), a new source aborting the old upload, and the
errors a user can cause (missing bucket, wrong credentials, no permission, an
unreachable endpoint, plain http not allowed).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import tarfile
from pathlib import Path

import pytest

from dataferry._exceptions import (
    ArchiveError,
    AuthenticationError,
    ConfigError,
    DestinationError,
    OverwriteConflictError,
)
from dataferry.extract import ArchiveKind, ExtractLimits
from dataferry.sinks import Extracted, Held, Sink
from dataferry.sinks.s3 import S3Sink
from dataferry.sinks.s3.sink import forget_clients
from dataferry.sinks.s3.writer import PART_SIZE, S3PartWriter
from dataferry.sources import RemoteFile
from tests.conformance.sink_suite import (
    MTIME,
    SinkSuite,
    SinkWorld,
    random_bytes,
    read_result,
    write_in_blocks,
)
from tests.support.s3 import READER, SeaweedS3, keys, make_bucket, objects, uploads
from tests.support.sshd import free_port

_numbers = itertools.count()


def new_bucket(server: SeaweedS3) -> str:
    return make_bucket(server, f"sink-{next(_numbers)}-{free_port()}")


class S3SinkWorld(SinkWorld):
    resume_min_bytes = PART_SIZE
    resumes_at_byte = False

    def __init__(self, url: str) -> None:
        self.root = Path(url)
        self.url = url
        self.sink = S3Sink(url)

    def another_sink(self) -> Sink:
        return S3Sink(self.url)


class TestS3Sink(SinkSuite):
    @pytest.fixture
    def sink_world(self, s3_env: SeaweedS3) -> SinkWorld:
        return S3SinkWorld(f"s3://{new_bucket(s3_env)}/out/data")


def test_nothing_visible_until_the_upload_completes(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    sink = S3Sink(f"s3://{bucket}/pre")
    data = random_bytes(3 * PART_SIZE + 12_345, 20)
    source = RemoteFile("/r/big.bin", len(data), MTIME)

    async def body() -> S3PartWriter:
        writer = await sink.open_part("big.bin", source)
        await write_in_blocks(writer, data[: 2 * PART_SIZE + 5], block=1 << 20)
        await asyncio.sleep(0)  # parts under way
        assert keys(s3_env, bucket) == []
        assert not sink.exists("big.bin")
        await write_in_blocks(writer, data[2 * PART_SIZE + 5 :], block=1 << 20)
        assert keys(s3_env, bucket) == []
        await writer.commit(MTIME)
        return writer

    writer = asyncio.run(body())
    assert writer.sent_parts == 4
    assert keys(s3_env, bucket) == ["pre/big.bin"]
    assert read_result(sink, "big.bin") == data
    assert sink.held("big.bin") == Held(len(data), MTIME)
    assert uploads(s3_env, bucket) == []
    assert not sink.has_partial("big.bin")


def test_a_new_run_reuses_the_stored_parts(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/pre"
    data = random_bytes(3 * PART_SIZE + 777, 21)
    source = RemoteFile("/r/big.bin", len(data), MTIME)

    async def cut_run() -> None:
        writer = await S3Sink(url).open_part("big.bin", source)
        await write_in_blocks(writer, data[: 2 * PART_SIZE + 100], block=1 << 20)
        await writer.close()  # cut: two parts stored, the rest not

    async def next_run() -> S3PartWriter:
        writer = await S3Sink(url).open_part("big.bin", source)
        assert writer.offset == 0
        await write_in_blocks(writer, data, block=1 << 20)
        await writer.commit(MTIME)
        return writer

    asyncio.run(cut_run())
    assert keys(s3_env, bucket) == []
    assert len(uploads(s3_env, bucket)) == 1
    writer = asyncio.run(next_run())
    assert (writer.reused_parts, writer.sent_parts) == (2, 2)
    assert read_result(S3Sink(url), "big.bin") == data
    assert uploads(s3_env, bucket) == []


def test_a_stored_part_with_other_bytes_is_sent_again(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/pre"
    first = random_bytes(2 * PART_SIZE + 10, 22)
    # Same size and mtime (the sidecar's identity) but other bytes in part 1.
    second = random_bytes(PART_SIZE, 23) + first[PART_SIZE:]
    source = RemoteFile("/r/big.bin", len(first), MTIME)

    async def run(data: bytes, commit: bool) -> S3PartWriter:
        writer = await S3Sink(url).open_part("big.bin", source)
        await write_in_blocks(writer, data if commit else data[: PART_SIZE * 2], block=1 << 20)
        if commit:
            await writer.commit(MTIME)
        else:
            await writer.close()
        return writer

    asyncio.run(run(first, commit=False))
    writer = asyncio.run(run(second, commit=True))
    assert (writer.reused_parts, writer.sent_parts) == (1, 2)
    assert read_result(S3Sink(url), "big.bin") == second


def test_another_source_aborts_the_old_upload(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/pre"
    data = random_bytes(2 * PART_SIZE + 10, 24)
    old = RemoteFile("/r/big.bin", len(data), MTIME)
    new = RemoteFile("/r/big.bin", len(data), MTIME + 1)

    async def body() -> None:
        writer = await S3Sink(url).open_part("big.bin", old)
        await write_in_blocks(writer, data[:PART_SIZE], block=1 << 20)
        await writer.close()
        first = {u["UploadId"] for u in uploads(s3_env, bucket)}
        again = await S3Sink(url).open_part("big.bin", new)
        assert isinstance(again, S3PartWriter)
        assert not first & {u["UploadId"] for u in uploads(s3_env, bucket)}
        await write_in_blocks(again, data, block=1 << 20)
        await again.commit(new.mtime)
        assert again.reused_parts == 0

    asyncio.run(body())
    assert uploads(s3_env, bucket) == []


# -- errors a user can cause: one line, a documented exit code -----------------------


def test_missing_bucket_is_a_destination_error(s3_env: SeaweedS3) -> None:
    with pytest.raises(DestinationError) as caught, S3Sink("s3://no-such-bucket-here/x").lock("t"):
        pass
    assert caught.value.exit_code == 7
    assert "s3://no-such-bucket-here/x: the bucket does not exist" in str(caught.value)
    # Checking did not create it (SeaweedFS makes a bucket on a first write by an admin).
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in names


def test_wrong_credentials_are_an_authentication_error(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3_env)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    forget_clients()
    with pytest.raises(AuthenticationError) as caught, S3Sink(f"s3://{bucket}/x").lock("t"):
        pass
    assert caught.value.exit_code == 3
    assert "rejected the credentials" in str(caught.value)
    assert "not-the-secret-at-all" not in str(caught.value)


def test_no_write_permission_is_a_destination_error(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3_env)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER[1])
    forget_clients()
    sink = S3Sink(f"s3://{bucket}/x")
    source = RemoteFile("/r/a.csv", 4, MTIME)

    async def body() -> None:
        writer = await sink.open_part("a.csv", source)
        await writer.write(b"abcd")
        await writer.commit(MTIME)

    with pytest.raises(DestinationError) as caught:
        asyncio.run(body())
    assert "access denied" in str(caught.value)
    assert str(caught.value).startswith(f"s3://{bucket}/x/a.csv")
    assert keys(s3_env, bucket) == []


def test_unreachable_endpoint_is_a_destination_error(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    forget_clients()
    with pytest.raises(DestinationError) as caught, S3Sink("s3://somebucket/x").lock("t"):
        pass
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in str(caught.value)


def test_plain_http_needs_allow_http(s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    forget_clients()
    with pytest.raises(ConfigError) as caught, S3Sink("s3://somebucket/x").lock("t"):
        pass
    assert "AWS_ALLOW_HTTP=true" in str(caught.value)
    assert caught.value.exit_code == 2


# -- archives: each member streamed into its own object, all or nothing ------------


def tar_gz(members: dict[str, bytes], hardlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(data))
        for name, target in (hardlinks or {}).items():
            link = tarfile.TarInfo(name)
            link.type = tarfile.LNKTYPE
            link.linkname = target
            archive.addfile(link)
    return buffer.getvalue()


def test_members_stream_into_uploads_completed_only_at_the_end(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    sink = S3Sink(f"s3://{bucket}/pre")
    big = random_bytes(PART_SIZE * 2 + 99, 30)
    data = tar_gz(
        {"d/big.bin": big, "small.csv": b"1,2\n", "empty.csv": b""}, {"copy.bin": "d/big.bin"}
    )
    seen: dict[str, object] = {}

    def before_install(results: list[Extracted]) -> None:
        # Every member went up already, as uploads not yet completed: none visible.
        seen["keys"] = keys(s3_env, bucket)
        seen["uploads"] = sorted(u["Key"] for u in uploads(s3_env, bucket))
        seen["results"] = sorted((r.path, r.size, r.mtime) for r in results)

    results = sink.extract_stream(
        io.BytesIO(data),
        len(data),
        "in/x.tar.gz",
        ArchiveKind.TAR_GZ,
        overwrite=False,
        owned=frozenset(),
        limits=ExtractLimits(max_total_bytes=1 << 30, max_ratio=1000),
        before_install=before_install,
    )
    assert seen["keys"] == []
    assert seen["uploads"] == ["pre/in/d/big.bin", "pre/in/small.csv"]
    assert seen["results"] == [
        ("in/copy.bin", len(big), MTIME),
        ("in/d/big.bin", len(big), MTIME),
        ("in/empty.csv", 0, MTIME),
        ("in/small.csv", 4, MTIME),
    ]
    assert {r.path: r.sha256 for r in results}["in/copy.bin"] == hashlib.sha256(big).hexdigest()
    assert objects(s3_env, bucket) == {
        "pre/in/d/big.bin": big,
        "pre/in/copy.bin": big,
        "pre/in/small.csv": b"1,2\n",
        "pre/in/empty.csv": b"",
    }
    assert sink.held("in/d/big.bin") == Held(len(big), MTIME)
    assert uploads(s3_env, bucket) == []


def test_a_refused_member_aborts_every_upload(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    sink = S3Sink(f"s3://{bucket}/pre")
    # Good members first (already uploading), then one escaping the destination.
    data = tar_gz({"ok.bin": random_bytes(PART_SIZE + 5, 31), "b.csv": b"b", "../evil.csv": b"x"})
    with pytest.raises(ArchiveError, match=r"\.\./evil\.csv"):
        sink.extract_stream(
            io.BytesIO(data),
            len(data),
            "x.tar.gz",
            ArchiveKind.TAR_GZ,
            overwrite=True,
            owned=frozenset(),
            limits=ExtractLimits(max_total_bytes=1 << 30, max_ratio=1000),
        )
    assert keys(s3_env, bucket) == []
    assert uploads(s3_env, bucket) == []


def test_existing_objects_are_not_overwritten_unless_allowed(s3_env: SeaweedS3) -> None:
    bucket = new_bucket(s3_env)
    sink = S3Sink(f"s3://{bucket}/pre")
    s3_env.client().put_object(Bucket=bucket, Key="pre/a.csv", Body=b"precious")
    data = tar_gz({"a.csv": b"new", "b.csv": b"b"})
    with pytest.raises(OverwriteConflictError, match="would overwrite s3://"):
        sink.extract_stream(
            io.BytesIO(data),
            len(data),
            "x.tar.gz",
            ArchiveKind.TAR_GZ,
            overwrite=False,
            owned=frozenset(),
            limits=ExtractLimits(max_total_bytes=1 << 30, max_ratio=1000),
        )
    assert objects(s3_env, bucket) == {"pre/a.csv": b"precious"}
    assert uploads(s3_env, bucket) == []
