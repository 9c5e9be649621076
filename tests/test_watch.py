"""``dataferry watch`` (issue 12): polls, picks up new files within two polls, serves
/healthz and /metrics, survives a folder that is not there yet, and exits 0 on
SIGTERM. A real process against the real servers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dataferry.sinks.local import part_path
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import REPO, Remote, random_bytes, run_args, run_cli, through
from tests.support.sshd import free_port
from tests.test_trees import plant

DEADLINE = 60.0  # seconds: a hang guard, not a measurement


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return str(response.read().decode())


def metric(port: int, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", scrape(port), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_until(condition: object, what: str) -> None:
    assert callable(condition)
    give_up = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def start_watch(remote: Remote, tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    drop = remote.root / "drop"
    args = [
        sys.executable, "-m", "dataferry", "watch", "t", "--every", "0.3",
        "--file_save_path", str(tmp_path / "out"), "--remote_file_path", remote.path(drop),
        "--metrics_port", str(port), "--max_tries", "1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        env={**remote.env(), "PYTHONPATH": str(REPO / "src")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def watching(remote: Remote, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = start_watch(remote, tmp_path, port)
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_watch_fetches_new_files_and_stops_on_sigterm(
    remote: Remote, tmp_path: Path, watching: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = watching
    out = tmp_path / "out"

    def serving() -> bool:
        try:
            return scrape(port, "/healthz") == "ok\n"
        except OSError:
            return process.poll() is not None  # it died: the assertions below say why

    wait_until(serving, "/healthz")
    assert process.poll() is None, process.communicate()
    # The folder is not there yet: polls fail, are counted, and the watch goes on.
    wait_until(lambda: metric(port, "dataferry_watch_poll_errors_total") >= 1, "a failed poll")
    plant(remote.root / "drop", {"a.csv": b"first"})
    wait_until(lambda: (out / "a.csv").exists(), "a.csv")
    before = metric(port, "dataferry_watch_polls_total")
    plant(remote.root / "drop", {"b.csv": b"second"})
    wait_until(lambda: (out / "b.csv").exists(), "b.csv")
    assert metric(port, "dataferry_watch_polls_total") <= before + 2  # within two polls
    wait_until(lambda: metric(port, "dataferry_watch_files_fetched_total") == 2, "the count")
    assert metric(port, "dataferry_watch_last_success_timestamp_seconds") > 0
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, stderr
    assert "watch of t stopped" in stderr
    assert (out / "a.csv").read_bytes() == b"first"
    assert (out / "b.csv").read_bytes() == b"second"


def test_watch_survives_the_server_going_away(remote: Remote, tmp_path: Path) -> None:
    """The server disappears (connections cut, nothing listening), polls fail and are
    counted, the server comes back: the watch reconnects and fetches what is new."""
    port = free_port()
    drop = remote.root / "drop"
    plant(drop, {"a.csv": b"first"})
    out = tmp_path / "out"
    proxy: FaultProxy | None = FaultProxy(remote.connection.port).__enter__()
    assert proxy is not None
    proxied = replace(remote, connection=through(remote.connection, proxy.port, tmp_path))
    process = start_watch(proxied, tmp_path, port)
    try:
        wait_until(lambda: (out / "a.csv").exists() or process.poll() is not None, "a.csv")
        assert process.poll() is None, process.communicate()
        polls = metric(port, "dataferry_watch_polls_total")
        wait_until(lambda: metric(port, "dataferry_watch_polls_total") >= polls + 3, "polls")
        assert proxy.connections == 1  # one connection kept across polls
        proxy.__exit__(None, None, None)  # the server goes away
        proxy = None
        errors = metric(port, "dataferry_watch_poll_errors_total")
        wait_until(
            lambda: metric(port, "dataferry_watch_poll_errors_total") >= errors + 2, "errors"
        )
        plant(drop, {"b.csv": b"second"})
        proxy = FaultProxy(remote.connection.port, port=proxied.connection.port).__enter__()
        wait_until(lambda: (out / "b.csv").exists(), "b.csv after the server came back")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, stderr
        assert "poll failed" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if proxy is not None:
            proxy.__exit__(None, None, None)


def test_sigterm_during_a_poll_leaves_the_file_in_flight_resumable(
    remote: Remote, tmp_path: Path, manifest_path: Path
) -> None:
    port = free_port()
    drop = remote.root / "drop"
    data = random_bytes(6 << 20, 7)
    plant(drop, {"big.bin": data})
    out = tmp_path / "out"
    with FaultProxy(remote.connection.port, FaultPlan(rate=1 << 20)) as proxy:
        proxied = replace(remote, connection=through(remote.connection, proxy.port, tmp_path))
        process = start_watch(proxied, tmp_path, port, "--include", "*.bin")
        try:
            partial = part_path(out / "big.bin")
            wait_until(
                lambda: (
                    (partial.exists() and partial.stat().st_size > 0) or process.poll() is not None
                ),
                "a partial download",
            )
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr
    assert partial.exists() and not (out / "big.bin").exists()
    assert "big.bin" not in (manifest_path.read_text() if manifest_path.exists() else "")
    # A run picks it up where it stopped.
    result = run_cli(
        [*run_args(out, remote.path(drop)), "--include", "*.bin"], remote.env(), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (out / "big.bin").read_bytes() == data
    assert "resuming" in result.stderr
