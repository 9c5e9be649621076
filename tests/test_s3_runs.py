"""Whole runs from SFTP into ``s3://`` (the embedded SFTP server and SeaweedFS, both real).

Plain files and archives land as objects under the prefix; a re-run skips what is
up to date; a hostile archive is exit 6 with nothing under the prefix; links are
dropped with a warning; kill -9 in the middle of an upload leaves nothing visible
and the next run reuses the parts already stored; user mistakes are one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from dataferry.sinks.s3.writer import PART_SIZE
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import (
    REPO,
    Remote,
    env_through,
    random_bytes,
    run_args,
    run_cli,
)
from tests.support.s3 import SeaweedS3, keys, make_bucket, objects, uploads
from tests.support.sshd import free_port

pytestmark = pytest.mark.parametrize("remote", ["embedded"], indirect=True)


def bucket_for(server: SeaweedS3) -> str:
    return make_bucket(server, f"run-{free_port()}")


def env_for(remote: Remote, server: SeaweedS3) -> dict[str, str]:
    return {**remote.env(), **server.environment()}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_plain_files_then_an_up_to_date_rerun(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    folder = remote.root / "d"
    folder.mkdir()
    big = random_bytes(2 * PART_SIZE + 4321, 1)
    (folder / "big.csv").write_bytes(big)
    (folder / "small.csv").write_bytes(b"a,b\n1,2\n")
    bucket = bucket_for(s3_env)
    args = run_args(f"s3://{bucket}/landing/", remote.path(folder))
    env = env_for(remote, s3_env)
    first = run_cli(args, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert objects(s3_env, bucket) == {"landing/big.csv": big, "landing/small.csv": b"a,b\n1,2\n"}
    assert uploads(s3_env, bucket) == []
    # The summary names the destination and each object by its URL.
    assert f"ready in s3://{bucket}/landing" in first.stdout
    assert f"  s3://{bucket}/landing/big.csv" in first.stdout
    manifest = json.loads(Path(env["DATAFERRY_MANIFEST"]).read_text())
    assert manifest["tasks"]["t"]["destination"] == f"s3://{bucket}/landing"
    again = run_cli(args, env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 already up to date" in again.stdout
    assert "2 already up to date, 0 B transferred" in again.stdout


def test_archives_become_one_object_per_member(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    folder = remote.root / "a"
    folder.mkdir()
    # Big enough to be extracted while it downloads (engine.run.OVERLAP_MIN_BYTES).
    zipped = {"z/one.csv": random_bytes(5 << 20, 2), "two.csv": b"x,y\n" * 100}
    make_zip(folder / "data.zip", zipped)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {"t/three.csv": b"3\n" * 10, "four.csv": b"4\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("four-link.csv")
        link.type = tarfile.SYMTYPE
        link.linkname = "four.csv"
        archive.addfile(link)
    (folder / "more.tar.gz").write_bytes(buffer.getvalue())
    bucket = bucket_for(s3_env)
    include = ["--include", "*.zip", "--include", "*.tar.gz"]
    args = run_args(f"s3://{bucket}/x/", remote.path(folder), *include)
    done = run_cli([*args, "--log-level", "INFO"], env_for(remote, s3_env), tmp_path)
    assert done.returncode == 0, done.stderr
    assert objects(s3_env, bucket) == {
        "x/z/one.csv": zipped["z/one.csv"],
        "x/two.csv": zipped["two.csv"],
        "x/t/three.csv": b"3\n" * 10,
        "x/four.csv": b"4\n",
    }
    assert "dropped the link" in done.stderr and "four-link.csv" in done.stderr
    verified = run_cli(["-m", "dataferry", "verify", "t"], env_for(remote, s3_env), tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "t: 4 file(s) intact" in verified.stdout


@pytest.mark.parametrize("filler", [0, 6 << 20], ids=["after-download", "while-downloading"])
def test_hostile_archive_is_exit_6_with_nothing_under_the_prefix(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path, filler: int
) -> None:
    """Small archives are extracted after their download, big ones while they
    download (the upload is then aborted, or the object removed): either way
    nothing is left under the prefix, not even the archive."""
    archive = remote.root / "evil.zip"
    with zipfile.ZipFile(archive, "w") as evil:
        evil.writestr("fine.csv", random_bytes(filler, 5) + b"a\n")
        evil.writestr("../escaped.csv", "b\n")
    bucket = bucket_for(s3_env)
    args = run_args(f"s3://{bucket}/p/evil.zip", remote.path(archive))
    done = run_cli(args, env_for(remote, s3_env), tmp_path)
    assert done.returncode == 6, done.stderr
    assert "../escaped.csv" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("dataferry: error:") == 1
    assert keys(s3_env, bucket) == []
    assert uploads(s3_env, bucket) == []


def test_missing_bucket_is_one_line_exit_7(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    (remote.root / "a.csv").write_bytes(b"1\n")
    args = run_args("s3://no-bucket-of-that-name/p/", remote.path(remote.root / "a.csv"))
    done = run_cli(args, env_for(remote, s3_env), tmp_path)
    assert done.returncode == 7
    assert done.stderr.startswith("dataferry: error: ")
    assert done.stderr.count("\n") == 1  # one line, no traceback
    assert done.stderr.endswith(
        "s3://no-bucket-of-that-name/p: the bucket does not exist (NoSuchBucket); create it first\n"
    )


def test_wrong_secret_is_one_line_exit_3(remote: Remote, s3_env: SeaweedS3, tmp_path: Path) -> None:
    (remote.root / "a.csv").write_bytes(b"1\n")
    bucket = bucket_for(s3_env)
    env = {**env_for(remote, s3_env), "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    done = run_cli(run_args(f"s3://{bucket}/p/", remote.path(remote.root / "a.csv")), env, tmp_path)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "rejected the credentials" in done.stderr
    assert "wrong-secret-value" not in done.stderr


def test_kill_9_mid_upload_then_rerun_reuses_parts(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    data = random_bytes(6 * PART_SIZE + 999, 3)
    source = remote.root / "k.bin"
    source.write_bytes(data)
    bucket = bucket_for(s3_env)
    args = run_args(f"s3://{bucket}/k/k.bin", remote.path(source), "--retry_delay", "0")
    env = env_for(remote, s3_env)
    with FaultProxy(remote.connection.port, FaultPlan(rate=8 << 20)) as proxy:
        slow = env_through(env, remote.connection, proxy.port, tmp_path)
        process = subprocess.Popen(
            [sys.executable, *args],
            env=slow,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = s3_env.client()
        stored = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and stored < 2:
            for upload in uploads(s3_env, bucket):
                parts = client.list_parts(Bucket=bucket, Key="k/k.bin", UploadId=upload["UploadId"])
                stored = len(parts.get("Parts", []))
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert stored >= 2
    assert keys(s3_env, bucket) == []  # nothing visible of the killed run
    again = run_cli([*args, "--log-level", "INFO"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "part(s) already stored" in again.stderr
    reused = int(again.stderr.split("resuming its upload: ")[1].split()[0])
    assert reused >= 2
    assert objects(s3_env, bucket) == {"k/k.bin": data}
    assert uploads(s3_env, bucket) == []


def high_water_mark(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), in bytes; 0 once it is gone.

    Not the child's ru_maxrss: that counts the pre-exec copy of this (large)
    pytest process, whatever the child itself uses.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def test_one_gib_streams_in_bounded_memory(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    """1 GiB from SFTP into one object, no local copy, under 250 MB peak RSS."""
    size = 1 << 30
    source = remote.root / "huge.bin"
    block = random_bytes(1 << 20, 4)
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for n in range(size >> 20):
            chunk = block[n % 7 :] + block[: n % 7]  # no two MiB alike
            handle.write(chunk)
            digest.update(chunk)
    bucket = bucket_for(s3_env)
    args = run_args(f"s3://{bucket}/big/huge.bin", remote.path(source))
    env = {**env_for(remote, s3_env), "PYTHONPATH": str(REPO / "src")}
    log = tmp_path.parent / f"{tmp_path.name}.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, *args], env=env, cwd=tmp_path, stderr=stderr)
        peak = 0
        while process.poll() is None:
            peak = max(peak, high_water_mark(process.pid))
            time.sleep(0.05)
    assert process.returncode == 0, log.read_text()
    assert 50 * 10**6 < peak < 250 * 10**6, f"peak RSS {peak / 1e6:.0f} MB"
    # Nothing staged on local disk (known_hosts is the SFTP fixture's).
    assert [p.name for p in tmp_path.rglob("*") if p.name != "known_hosts"] == []
    source.unlink()
    client = s3_env.client()
    body = client.get_object(Bucket=bucket, Key="big/huge.bin")["Body"]
    received = hashlib.sha256()
    while chunk := body.read(8 << 20):
        received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()
    print(f"1 GiB to s3://: peak RSS {peak / 1e6:.0f} MB")


def test_frozen_and_verify_through_the_manifest(
    remote: Remote, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    """--frozen fetches what the manifest pins into the bucket and refuses a changed
    remote (exit 9, objects untouched); verify finds a changed or missing object (exit 8)."""
    folder = remote.root / "f"
    folder.mkdir()
    for name in ("a.csv", "b.csv"):
        (folder / name).write_bytes(name.encode() * 100)
    bucket = bucket_for(s3_env)
    args = run_args(f"s3://{bucket}/f/", remote.path(folder))
    env = env_for(remote, s3_env)
    assert run_cli(args, env, tmp_path).returncode == 0
    client = s3_env.client()
    client.delete_object(Bucket=bucket, Key="f/a.csv")
    assert run_cli([*args, "--frozen"], env, tmp_path).returncode == 0
    assert objects(s3_env, bucket)["f/a.csv"] == b"a.csv" * 100
    (folder / "b.csv").write_bytes(b"changed" * 100)
    changed = run_cli([*args, "--frozen"], env, tmp_path)
    assert changed.returncode == 9, changed.stderr
    assert "b.csv changed" in changed.stderr
    assert objects(s3_env, bucket)["f/b.csv"] == b"b.csv" * 100
    client.put_object(Bucket=bucket, Key="f/a.csv", Body=b"A.CSV" * 100)
    client.delete_object(Bucket=bucket, Key="f/b.csv")
    drifted = run_cli(["-m", "dataferry", "verify", "t"], env, tmp_path)
    assert drifted.returncode == 8, drifted.stderr
    assert f"s3://{bucket}/f/a.csv: content changed" in drifted.stdout
    assert f"s3://{bucket}/f/b.csv: missing" in drifted.stdout
