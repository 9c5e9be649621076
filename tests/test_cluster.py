"""Runs sharded across a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on loopback (tests/support/dask.py), against the real OpenSSH sshd."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataferry.cluster.sharding import shard_by_bytes
from dataferry.sinks.local import PART_SUFFIX
from tests.support.dask import DaskCluster
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import (
    Remote,
    env_through,
    random_bytes,
    run_cli,
    sshd_connection,
)
from tests.support.sshd import OpenSSHServer, free_port


@given(
    sizes=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 10**9), max_size=60),
    count=st.integers(1, 8),
)
def test_shards_hold_every_file_once_and_about_equal_bytes(
    sizes: dict[str, int], count: int
) -> None:
    shards = shard_by_bytes(list(sizes.items()), count)
    assert len(shards) <= count
    assert sorted(key for shard in shards for key in shard) == sorted(sizes)
    if len(shards) == count:
        totals = [sum(sizes[key] for key in shard) for shard in shards]
        assert max(totals) - min(totals) <= max(sizes.values())


def _remote(server: OpenSSHServer, tmp_path: Path) -> Remote:
    root = tmp_path / "remote"
    root.mkdir()
    return Remote("openssh", root, sshd_connection(server, tmp_path / "known_hosts"), None)


def _dataset(root: Path) -> Path:
    folder = root / "data"
    folder.mkdir()
    for k in range(24):
        (folder / f"part-{k:02d}.csv").write_bytes(random_bytes(20_000 + 7_000 * k, k))
    with zipfile.ZipFile(folder / "bundle.zip", "w") as archive:
        for k in range(3):
            archive.writestr(f"inner/{k}.csv", random_bytes(50_000, 100 + k))
    return folder


def _run(
    remote: Remote, folder: Path, save: Path, cwd: Path, *extra: str, env: dict[str, str] | None
) -> subprocess.CompletedProcess[str]:
    args = [
        "-m",
        "dataferry",
        "run",
        "t",
        "--file_save_path",
        f"{save}/",
        "--remote_file_path",
        str(folder),
        "--include",
        "*",
        "--log-level",
        "INFO",
        *extra,
    ]
    return run_cli(args, env or remote.env(), cwd)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _entries(manifest: Path) -> dict[str, object]:
    task = json.loads(manifest.read_text())["tasks"]["t"]
    return {
        entry["source"]["path"]: sorted((r["path"], r["sha256"]) for r in entry["results"])
        for entry in task["files"]
    }


def test_cluster_run_is_identical_to_a_single_process_run(
    sshd_server: OpenSSHServer, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    remote = _remote(sshd_server, tmp_path)
    folder = _dataset(remote.root)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir()
    sharded.mkdir()
    env_single = {**remote.env(), "DATAFERRY_MANIFEST": str(single / "m.json")}
    first = _run(remote, folder, single / "out", single, env=env_single)
    assert first.returncode == 0, first.stderr
    env_sharded = {**remote.env(), "DATAFERRY_MANIFEST": str(sharded / "m.json")}
    second = _run(
        remote,
        folder,
        sharded / "out",
        sharded,
        "--scheduler",
        dask_cluster.address,
        env=env_sharded,
    )
    assert second.returncode == 0, second.stderr
    assert "shard 1/" in second.stderr
    assert _tree(sharded / "out") == _tree(single / "out")
    assert "inner/0.csv" in _tree(sharded / "out")  # the archive was extracted (whole, once)
    assert _entries(sharded / "m.json") == _entries(single / "m.json")
    # A second cluster run finds everything up to date and fetches nothing.
    again = _run(
        remote,
        folder,
        sharded / "out",
        sharded,
        "--scheduler",
        dask_cluster.address,
        env=env_sharded,
    )
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout


def test_lost_worker_shard_is_run_again(
    sshd_server: OpenSSHServer, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    remote = _remote(sshd_server, tmp_path)
    folder = remote.root / "big"
    folder.mkdir()
    expected = {f"f{k}.bin": random_bytes(6 << 20, k) for k in range(4)}
    for name, data in expected.items():
        (folder / name).write_bytes(data)
    save = tmp_path / "out"
    # 3 MB/s per connection: each shard (one 6 MiB file) takes about 2 s.
    with FaultProxy(remote.connection.port, FaultPlan(rate=3 << 20)) as proxy:
        env = env_through(remote.env(), remote.connection, proxy.port, tmp_path)
        argv = [
            sys.executable, "-m", "dataferry", "run", "t", "--file_save_path", f"{save}/",
            "--remote_file_path", str(folder), "--include", "*", "--log-level", "INFO",
            "--scheduler", dask_cluster.address,
        ]  # fmt: skip
        coordinator = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                parts = list(save.glob(f".*{PART_SUFFIX}")) if save.exists() else []
                if len(parts) >= 2:  # both workers are fetching
                    break
                time.sleep(0.05)
            victim = dask_cluster.workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            _, err = coordinator.communicate(timeout=120)
        finally:
            if coordinator.poll() is None:
                coordinator.kill()
                coordinator.wait()
    assert len(parts) >= 2
    assert coordinator.returncode == 0, err
    assert {p.name: p.read_bytes() for p in save.iterdir()} == expected  # no part file left
    done_on = re.findall(r"shard \d+/\d+ done on [^:]+:(\d+)", err)
    assert len(done_on) == 4, err
    assert str(victim.pid) not in done_on  # its shard was redone by the other worker
    manifest = json.loads(Path(os.environ["DATAFERRY_MANIFEST"]).read_text())
    recorded = [entry["source"]["path"] for entry in manifest["tasks"]["t"]["files"]]
    assert sorted(recorded) == sorted(str(folder / name) for name in expected)  # each once


# Dask's own connect timeout, shortened: an unreachable scheduler is retried until it expires.
QUICK_GIVE_UP = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}


def test_unreachable_scheduler_is_exit_10(tmp_path: Path) -> None:
    env = {"REMOTE_HOST_ADDRESS": "127.0.0.1", "USERNAME": "nobody", "PATH": "/usr/bin:/bin"}
    env.update(QUICK_GIVE_UP)
    address = f"tcp://127.0.0.1:{free_port()}"
    args = ["-m", "dataferry", "run", "t", "--file_save_path", str(tmp_path / "o"),
            "--remote_file_path", "/x", "--scheduler", address]  # fmt: skip
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 10, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Dask scheduler at {address}" in lines[0]


def test_scheduler_from_the_environment(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {
        "REMOTE_HOST_ADDRESS": "127.0.0.1",
        "USERNAME": "nobody",
        "PATH": "/usr/bin:/bin",
        "DASK_SCHEDULER_ADDRESS": address,
        **QUICK_GIVE_UP,
    }
    args = ["-m", "dataferry", "run", "t", "--file_save_path", str(tmp_path / "o"),
            "--remote_file_path", "/x"]  # fmt: skip
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 10 and address in result.stderr, result.stderr


@pytest.mark.parametrize(
    "extra", [["--workers", "0"], ["--workers", "many"], ["--workers", "2", "--scheduler", "x"]]
)
def test_bad_cluster_flags_are_exit_2(tmp_path: Path, extra: list[str]) -> None:
    env = {"REMOTE_HOST_ADDRESS": "127.0.0.1", "USERNAME": "nobody", "PATH": "/usr/bin:/bin"}
    args = ["-m", "dataferry", "run", "t", "--file_save_path", str(tmp_path / "o"),
            "--remote_file_path", "/x", *extra]  # fmt: skip
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_without_dask_is_one_line_and_exit_10(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "distributed.py").write_text("raise ImportError('no dask here')\n")
    env = {
        "REMOTE_HOST_ADDRESS": "127.0.0.1",
        "USERNAME": "nobody",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(shadow),
    }
    args = ["-m", "dataferry", "run", "t", "--file_save_path", str(tmp_path / "o"),
            "--remote_file_path", "/x", "--workers", "2"]  # fmt: skip
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 10, result.stderr
    assert "pip install 'dataferry[dask]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_password_never_reaches_dask_logs(
    sshd_server: OpenSSHServer,
    dask_cluster: DaskCluster,
    password_user: tuple[str, str],
    tmp_path: Path,
) -> None:
    user, password = password_user
    remote = _remote(sshd_server, tmp_path)
    folder = _dataset(remote.root)
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in folder.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    env = {
        key: value for key, value in remote.env().items() if key not in ("SSH_KEY_FILE", "USERNAME")
    }
    env.update(USERNAME=user, PASSWORD=password, DATAFERRY_MANIFEST=str(tmp_path / "m.json"))
    result = _run(
        remote,
        folder,
        tmp_path / "out",
        tmp_path,
        "--scheduler",
        dask_cluster.address,
        "--log-level",
        "DEBUG",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "part-00.csv").exists()
    for text in (
        dask_cluster.logs(),
        result.stdout,
        result.stderr,
        (tmp_path / "m.json").read_text(),
    ):
        assert password not in text


def test_all_tasks_run_at_once_and_a_failing_one_keeps_its_exit_code(
    sshd_server: OpenSSHServer, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    remote = _remote(sshd_server, tmp_path)
    folder = _dataset(remote.root)
    config = {
        "common": {"include": ["*"]},
        "one": {"file_save_path": f"{tmp_path / 'one'}/", "remote_file_path": str(folder)},
        "two": {"file_save_path": f"{tmp_path / 'two'}/", "remote_file_path": str(folder)},
        "gone": {"file_save_path": f"{tmp_path / 'gone'}/", "remote_file_path": "/no/such/dir"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["-m", "dataferry", "run", "--all", "--scheduler", dask_cluster.address]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 4, result.stderr  # the missing remote path's code
    assert "/no/such/dir" in result.stderr and "Traceback" not in result.stderr
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert "part-23.csv" in _tree(tmp_path / "one")


def test_local_cluster_of_worker_processes(sshd_server: OpenSSHServer, tmp_path: Path) -> None:
    """--workers N: the embedded default, a local Dask cluster of N processes."""
    pytest.importorskip("distributed")
    remote = _remote(sshd_server, tmp_path)
    folder = _dataset(remote.root)
    result = _run(remote, folder, tmp_path / "out", tmp_path, "--workers", "2", env=None)
    assert result.returncode == 0, result.stderr
    assert "over 2 worker(s)" in result.stderr
    # One task: the usual progress (here, off a terminal, its lines) hears the shards.
    done = re.search(r"t: done, (\d+) file\(s\), (\S+ \S+) transferred", result.stderr)
    assert done is not None, result.stderr
    assert int(done.group(1)) > 0
    assert f"{done.group(2)} transferred" in result.stdout  # the summary agrees
    expected = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".csv"}
    got = _tree(tmp_path / "out")
    assert {name: got[name] for name in expected} == expected
    assert "inner/2.csv" in got and "bundle.zip" not in got  # extracted, then removed
