"""Fault injection: resets, server restarts, SIGKILL, full disk, locks, integrity.

Whatever happens, a task ends with exactly the remote bytes or a clear error,
never a half-written file under a final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from dataferry import (
    ArchiveError,
    ConfigError,
    TaskObserver,
    run_task,
)
from dataferry._connection import ConnectionSettings, HostKeyPolicy
from dataferry.sinks.local import lock_path, part_path
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
from tests.support.sshd import OpenSSHServer, start_sshd

# What the fault tests measured, written to tests/.reliability-last-run.txt
# after the module runs; docs/reliability.md quotes it.
OUTCOMES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _write_outcomes() -> Iterator[None]:
    yield
    (REPO / "tests" / ".reliability-last-run.txt").write_text("\n".join(OUTCOMES) + "\n")


class Starts(TaskObserver):
    """Records where each download (re)started."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.retries = 0

    def file_started(self, task: str, remote_path: str, size: int, offset: int) -> None:
        self.offsets.append(offset)

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        self.retries += 1


def random_file(path: Path, size: int, seed: int = 7) -> Path:
    path.write_bytes(random_bytes(size, seed))
    return path


@pytest.mark.parametrize("seed", [1, 2])
def test_connection_resets_resume_to_identical_bytes(
    remote: Remote, tmp_path: Path, seed: int
) -> None:
    size = 64 << 20
    source = random_file(remote.root / "big.bin", size, seed)
    plan = FaultPlan(resets=3, reset_after=(16 << 20, 24 << 20), seed=seed)
    starts = Starts()
    with FaultProxy(remote.connection.port, plan) as proxy:
        connection = through(remote.connection, proxy.port, tmp_path)
        save = tmp_path / "out" / "big.bin"
        asyncio.run(
            run_task(settings_for(remote.path(source), save, max_tries=6), connection, starts)
        )
    assert save.read_bytes() == source.read_bytes()
    assert proxy.resets_done == 3 and starts.retries == 3
    # Each retry continued from what the partial file held. Starting over would
    # have wasted every byte sent before each reset; resuming wastes only what was
    # in buffers (socket and in-flight reads) when the link dropped.
    assert len(starts.offsets) == 4 and all(offset > 0 for offset in starts.offsets[1:])
    wasted = proxy.bytes_to_client - size
    assert wasted < 0.5 * sum(proxy.reset_points)
    OUTCOMES.append(
        f"{remote.kind}: 3 resets (seed {seed}) after {proxy.reset_points} bytes: "
        f"{wasted} bytes resent (a restart would resend {sum(proxy.reset_points)}), identical"
    )


def test_server_restart_mid_transfer(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd")
    try:
        known = server.write_known_hosts(tmp_path / "known_hosts")
        connection = ConnectionSettings(
            host="127.0.0.1",
            port=server.port,
            username=server.username,
            key_file=server.client_key,
            known_hosts=known,
            host_key_policy=HostKeyPolicy.STRICT,
        )
        source = random_file(tmp_path / "src.bin", 24 << 20)
        save = tmp_path / "out" / "src.bin"
        starts = Starts()
        with FaultProxy(server.port, FaultPlan(rate=12 << 20)) as proxy:
            restarted = threading.Event()

            def restart_when_half_done() -> None:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    part = part_path(save)
                    if part.exists() and part.stat().st_size > (6 << 20):
                        restart_sshd(server)
                        restarted.set()
                        return
                    time.sleep(0.02)

            thread = threading.Thread(target=restart_when_half_done)
            thread.start()
            asyncio.run(
                run_task(
                    settings_for(str(source), save, max_tries=5, retry_delay=0.3),
                    through(connection, proxy.port, tmp_path),
                    starts,
                )
            )
            thread.join()
        assert restarted.is_set()
        assert save.read_bytes() == source.read_bytes()
        assert starts.retries >= 1 and max(starts.offsets) > 0
        OUTCOMES.append(
            f"sshd restarted mid-transfer: resumed at {max(starts.offsets)} bytes, identical"
        )
    finally:
        server.stop()


def restart_sshd(server: OpenSSHServer) -> None:
    server.stop()
    time.sleep(0.2)
    server.restart()


@contextlib.contextmanager
def download_under_way(
    remote: Remote, tmp_path: Path, args: list[str], save: Path, **popen: Any
) -> Iterator[subprocess.Popen[str]]:
    """The CLI fetching through a 4 MB/s proxy, returned once 3 MiB are on disk."""
    with FaultProxy(remote.connection.port, FaultPlan(rate=4 << 20)) as proxy:
        env = env_through(remote.env(), remote.connection, proxy.port, tmp_path)
        process = subprocess.Popen(
            [sys.executable, *args], env=env, cwd=tmp_path, text=True, **popen
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            part = part_path(save)
            if part.exists() and part.stat().st_size > (3 << 20):
                break
            time.sleep(0.02)
        yield process


def test_sigkill_then_rerun_resumes(remote: Remote, tmp_path: Path) -> None:
    source = random_file(remote.root / "k.bin", 16 << 20)
    save = tmp_path / "k.bin"
    args = run_args(save, remote.path(source), "--retry_delay", "0")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with download_under_way(remote, tmp_path, args, save, **quiet) as process:
        process.send_signal(signal.SIGKILL)
        process.wait()
    held = part_path(save).stat().st_size
    assert not save.exists()  # nothing under the final name
    assert 0 < held < source.stat().st_size
    result = run_cli([*args, "--log-level", "INFO"], remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert save.read_bytes() == source.read_bytes()
    assert not part_path(save).exists()
    OUTCOMES.append(f"{remote.kind}: SIGKILL at {held} bytes, re-run resumed, identical")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_disk_full_is_exit_7_and_resumable(remote: Remote, tmp_path: Path) -> None:
    source = random_file(remote.root / "f.bin", 3 << 20)
    save = tmp_path / "dest" / "f.bin"
    args = run_args(save, remote.path(source))
    result = subprocess.run(
        [sys.executable, *args],
        env=remote.env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=120,
    )
    assert result.returncode == 7, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot write {part_path(save)}: file too large" in result.stderr
    assert not save.exists()
    assert part_path(save).stat().st_size <= 1 << 20
    result = run_cli([*args, "--log-level", "INFO"], remote.env(), tmp_path)
    assert result.returncode == 0 and "resuming" in result.stderr
    assert save.read_bytes() == source.read_bytes()
    OUTCOMES.append(f"{remote.kind}: file size limit hit: exit 7, nothing final, resumed after")


def test_second_run_waits_for_the_lock(remote: Remote, tmp_path: Path) -> None:
    source = random_file(remote.root / "l.bin", 1 << 20)
    save = tmp_path / "l.bin"
    lock = FileLock(lock_path(save))  # outside the data: the user's runtime folder
    with lock:
        process = subprocess.Popen(
            [sys.executable, *run_args(save, remote.path(source))],
            env=remote.env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "another dataferry run is writing to" in line
        assert not save.exists()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert save.read_bytes() == source.read_bytes()


def test_sha256_verification(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "d"
    folder.mkdir()
    random_file(folder / "a b.csv", 300_000, 1)
    random_file(folder / "c.csv", 10, 2)
    asyncio.run(
        run_task(
            settings_for(remote.path(folder), tmp_path / "out", verify="sha256"), remote.connection
        )
    )
    assert (tmp_path / "out/a b.csv").read_bytes() == (folder / "a b.csv").read_bytes()
    assert (tmp_path / "out/c.csv").read_bytes() == (folder / "c.csv").read_bytes()


def test_sha256_refused_when_server_runs_no_commands(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd", ["ForceCommand internal-sftp"])
    try:
        known = server.write_known_hosts(tmp_path / "known_hosts")
        connection = ConnectionSettings(
            host="127.0.0.1",
            port=server.port,
            username=server.username,
            key_file=server.client_key,
            known_hosts=known,
        )
        source = random_file(tmp_path / "s.bin", 1000)
        with pytest.raises(ConfigError, match=r"cannot run sha256sum.*set verify to size"):
            asyncio.run(
                run_task(settings_for(str(source), tmp_path / "o.bin", verify="sha256"), connection)
            )
        assert not (tmp_path / "o.bin").exists()
    finally:
        server.stop()


def test_hostile_archive_changes_nothing(remote: Remote, tmp_path: Path) -> None:
    archive = remote.root / "evil.zip"
    with zipfile.ZipFile(archive, "w") as evil:
        evil.writestr("fine.csv", "a\n")
        evil.writestr("../escaped.csv", "b\n")
    dest = tmp_path / "inside" / "dest"
    dest.mkdir(parents=True)
    (dest / "fine.csv").write_text("precious\n")
    with pytest.raises(ArchiveError, match=r"\.\./escaped\.csv"):
        asyncio.run(
            run_task(
                settings_for(remote.path(archive), dest / "evil.zip", overwrite=True),
                remote.connection,
            )
        )
    assert (dest / "fine.csv").read_text() == "precious\n"
    assert not (tmp_path / "inside" / "escaped.csv").exists()
    assert (dest / "evil.zip").read_bytes() == archive.read_bytes()  # kept for inspection
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        "evil.zip",
        "fine.csv",
    ]


def test_sigterm_is_handled_like_ctrl_c(remote: Remote, tmp_path: Path) -> None:
    """What docker stop and Kubernetes send: a message, partial files kept, exit 143."""
    source = random_file(remote.root / "t.bin", 16 << 20)
    save = tmp_path / "t.bin"
    args = run_args(save, remote.path(source), "--retry_delay", "0")
    piped = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    with download_under_way(remote, tmp_path, args, save, **piped) as process:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert "terminated; partial downloads are kept" in err and "Traceback" not in err
    assert not save.exists()
    assert part_path(save).stat().st_size > 0
    result = run_cli([*args, "--log-level", "INFO"], remote.env(), tmp_path)
    assert result.returncode == 0 and "resuming" in result.stderr, result.stderr
    assert save.read_bytes() == source.read_bytes()
