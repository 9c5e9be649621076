"""Live drop folders (issue 12): files still being written are not fetched (min_age,
stable_for), files wait for their ready marker, and a later run fetches them
once they are ready. A real writer process appends during the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import Remote, run_args, run_cli, through
from tests.test_trees import local_tree, plant

WRITER = """
import sys, time
with open(sys.argv[1], "ab", buffering=0) as handle:
    while True:
        handle.write(b"row,1\\n")
        time.sleep(0.05)
"""


class Writer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def writer(remote: Remote) -> Iterator[Writer]:
    """A process appending to drop/growing.csv until the test (or stop()) ends it."""
    growing = remote.root / "drop" / "growing.csv"
    growing.parent.mkdir(parents=True, exist_ok=True)
    growing.write_bytes(b"header\n")
    running = Writer(growing)
    try:
        while growing.stat().st_size == len(b"header\n"):
            time.sleep(0.01)  # it is writing
        yield running
    finally:
        running.stop()


def plant_steady(remote: Remote) -> None:
    plant(remote.root / "drop", {"steady.csv": b"done,1\n"})
    os.utime(remote.root / "drop" / "steady.csv", (time.time() - 3600,) * 2)


def test_min_age_leaves_a_file_being_written_for_a_later_run(
    remote: Remote, writer: Writer, tmp_path: Path
) -> None:
    plant_steady(remote)
    out = tmp_path / "out"
    args = [*run_args(out, remote.path(remote.root / "drop")), "--min_age", "60s"]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(local_tree(out)) == ["steady.csv"]
    assert "1 modified within min_age (may still be written)" in result.stderr


def test_stable_for_leaves_a_file_being_written_then_a_later_run_fetches_it(
    remote: Remote, writer: Writer, tmp_path: Path
) -> None:
    plant_steady(remote)
    out = tmp_path / "out"
    args = [*run_args(out, remote.path(remote.root / "drop")), "--stable_for", "1", "--json"]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(local_tree(out)) == ["steady.csv"]
    assert '"reason": "changed within stable_for (still being written)"' in result.stdout
    # The writer finishes; the next run fetches the whole file.
    writer.stop()
    final = writer.path.read_bytes()
    again = run_cli(args, remote.env(), tmp_path)
    assert again.returncode == 0, again.stderr
    assert local_tree(out) == {"steady.csv": b"done,1\n", "growing.csv": final}


def test_a_ready_marker_holds_its_file_back_until_it_exists(remote: Remote, tmp_path: Path) -> None:
    drop = remote.root / "drop"
    plant(drop, {"a.csv": b"a", "b.csv": b"b", "b.csv.done": b""})
    out = tmp_path / "out"
    args = [*run_args(out, remote.path(drop)), "--ready_marker", "{name}.done"]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {"b.csv": b"b"}  # the marker itself is not fetched
    assert "1 its ready marker is not there yet" in result.stderr
    (drop / "a.csv.done").write_bytes(b"")
    assert run_cli(args, remote.env(), tmp_path).returncode == 0
    assert local_tree(out) == {"a.csv": b"a", "b.csv": b"b"}


def test_a_file_that_grows_during_its_transfer_is_never_recorded_complete(
    remote: Remote, tmp_path: Path, manifest_path: Path
) -> None:
    """Its ready marker came too early: the download starts while a writer appends;
    each try finds the file changed before it takes its final name, and nothing
    claims the file (the whole file fits in the first reads: the read past its
    listed end goes out before the next append)."""
    drop = remote.root / "drop"
    growing = drop / "growing.csv"
    plant(drop, {"growing.csv": b"x" * (512 << 10), "growing.csv.done": b""})
    running = Writer(growing)
    try:
        with FaultProxy(remote.connection.port, FaultPlan(rate=1 << 20)) as proxy:
            proxied = replace(remote, connection=through(remote.connection, proxy.port, tmp_path))
            out = tmp_path / "out"
            result = run_cli(
                [
                    *run_args(out, remote.path(drop)),
                    *("--max_tries", "2", "--ready_marker", "{name}.done"),
                ],
                proxied.env(),
                tmp_path,
            )
    finally:
        running.stop()
    assert result.returncode == 5, result.stderr
    assert "changed during the transfer" in result.stderr
    assert not (out / "growing.csv").exists()
    manifest = manifest_path.read_text() if manifest_path.exists() else ""
    assert "growing.csv" not in manifest or '"complete": false' in manifest
