"""The command line as users type it: exit codes, one-line errors, the seed's scripts, the demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from dataferry.plan.names import is_bookkeeping
from tests.support.faults import FaultProxy
from tests.support.remote import REPO, Remote, run_args, run_cli, through

SCRIPTS = REPO / "src"


def write_config(
    directory: Path, tasks: dict[str, dict[str, object]], common: dict[str, object] | None = None
) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps({"common": common or {"retry_delay": 0}, **tasks}))
    return path


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataferry: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.mark.parametrize("number", [1, 2, 3])
def test_seed_script_help(number: int, tmp_path: Path) -> None:
    result = run_cli([str(SCRIPTS / f"task_{number}.py"), "--help"], {}, tmp_path)
    assert result.returncode == 0
    for flag in (
        "--task",
        "--config_file",
        "--file_save_path",
        "--remote_file_path",
        "--keep_zip_tar_file",
        "--max_tries",
        "--retry_delay",
        "--log-level",
        "--overwrite",
        "exit codes",
    ):
        assert flag in result.stdout


def test_dataferry_help_lists_commands(tmp_path: Path) -> None:
    result = run_cli(["-m", "dataferry", "--help"], {}, tmp_path)
    assert result.returncode == 0
    for word in ("run", "demo", "serve", "exit codes"):
        assert word in result.stdout
    result = run_cli(["-m", "dataferry", "run", "--help"], {}, tmp_path)
    assert "--all" in result.stdout and "--file_save_path" in result.stdout


def test_seed_script_with_config_file(remote: Remote, tmp_path: Path) -> None:
    with zipfile.ZipFile(remote.root / "jan.csv.zip", "w") as archive:
        archive.writestr("jan.csv", "a,b\n1,2\n")
    write_config(
        tmp_path,
        {
            "task_1": {
                "file_save_path": "./data/task1/jan.csv.zip",
                "remote_file_path": remote.path(remote.root / "jan.csv.zip"),
            }
        },
    )
    result = run_cli(
        [str(SCRIPTS / "task_1.py"), "--task", "task_1", "--config_file", "config.json"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/task1/jan.csv").read_text() == "a,b\n1,2\n"
    assert "task_1: 1 file(s) ready" in result.stdout


def test_flags_override_config_and_work_without_it(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "feb.tar.gz"
    shutil.make_archive(str(remote.root / "feb"), "gztar", root_dir=REPO, base_dir="config.json")
    write_config(
        tmp_path,
        {
            "task_2": {
                "file_save_path": "./data/unused.tar.gz",
                "remote_file_path": "/does/not/exist.tar.gz",
            }
        },
    )
    # Flags beat the file (the seed ignored them whenever a config file was given).
    result = run_cli(
        [
            str(SCRIPTS / "task_2.py"),
            "--config_file",
            "config.json",
            "--remote_file_path",
            remote.path(source),
            "--file_save_path",
            "./data/f.tar.gz",
            "--keep_zip_tar_file",
            "True",
        ],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/f.tar.gz").read_bytes() == source.read_bytes()
    assert (tmp_path / "data/config.json").read_bytes() == (REPO / "config.json").read_bytes()
    # No config file at all, as in the seed's docs.
    result = run_cli(
        [
            str(SCRIPTS / "task_2.py"),
            "--file_save_path",
            "./other/f.tar.gz",
            "--remote_file_path",
            remote.path(source),
        ],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "other/config.json").exists()
    assert not (tmp_path / "other/f.tar.gz").exists()


def test_exit_codes(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "a.csv"
    source.write_text("a\n")
    (remote.root / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    write_config(
        tmp_path,
        {
            "ok": {"file_save_path": "./out/a.csv", "remote_file_path": remote.path(source)},
            "bad": {"file_save_path": "./x", "remote_file_path": "/x", "max_tries": "abc"},
            "missing": {
                "file_save_path": "./m",
                "remote_file_path": remote.path(remote.root / "m"),
            },
            "broken": {
                "file_save_path": "./b/broken.zip",
                "remote_file_path": remote.path(remote.root / "broken.zip"),
            },
        },
        common={"retry_delay": 0, "overwrite": False},
    )
    env = remote.env()
    dataferry = ["-m", "dataferry", "run"]
    assert_one_line_error(
        run_cli([*dataferry, "bad"], env, tmp_path),
        2,
        'config.json: bad.max_tries: expected a whole number, got "abc"',
    )
    assert_one_line_error(
        run_cli([*dataferry, "nope"], env, tmp_path),
        2,
        'no task "nope"; tasks in this file: ok, bad, missing, broken',
    )
    assert_one_line_error(
        run_cli([*dataferry, "ok", "--overwrite", "perhaps"], env, tmp_path),
        2,
        '--overwrite: expected true or false, got "perhaps"',
    )
    assert_one_line_error(
        run_cli([*dataferry, "missing"], env, tmp_path), 4, "remote path not found"
    )
    assert_one_line_error(run_cli([*dataferry, "broken"], env, tmp_path), 6, "broken.zip")
    assert (tmp_path / "b/broken.zip").exists()  # kept for inspection
    assert run_cli([*dataferry, "ok"], env, tmp_path).returncode == 0
    again = run_cli([*dataferry, "ok"], env, tmp_path)  # unchanged remote: skipped, no conflict
    assert again.returncode == 0 and "1 already up to date" in again.stdout
    # --force with overwrite false: dataferry's own, unchanged result is fetched again.
    assert run_cli([*dataferry, "ok", "--force"], env, tmp_path).returncode == 0
    (tmp_path / "out/a.csv").write_text("edited by hand")  # now the user's: protected
    assert_one_line_error(
        run_cli([*dataferry, "ok", "--force"], env, tmp_path), 7, "changed since dataferry wrote it"
    )
    closed = {**env, "REMOTE_PORT": "1"}
    assert_one_line_error(
        run_cli([*dataferry, "ok", "--overwrite", "true", "--max_tries", "2"], closed, tmp_path),
        5,
        "failed after 2 tries",
    )
    unknown = {**env, "SSH_KNOWN_HOSTS": str(tmp_path / "none")}
    assert_one_line_error(
        run_cli([*dataferry, "ok", "--overwrite", "true"], unknown, tmp_path), 3, "is not known"
    )
    no_host = {key: value for key, value in env.items() if key != "REMOTE_HOST_ADDRESS"}
    assert_one_line_error(
        run_cli([*dataferry, "ok"], no_host, tmp_path), 2, "REMOTE_HOST_ADDRESS is not set"
    )


def test_password_never_printed(remote: Remote, tmp_path: Path) -> None:
    env = {**remote.env(), "PASSWORD": "Very-Secret-Word-9", "SSH_KEY_FILE": ""}
    env.pop("SSH_KEY_FILE")
    result = run_cli(run_args("./x", "/x", "--log-level", "DEBUG"), env, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Very-Secret-Word-9" not in result.stderr + result.stdout


def test_run_all(remote: Remote, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (remote.root / f"{name}.csv").write_text(name)
    write_config(
        tmp_path,
        {
            name: {
                "file_save_path": f"./all/{name}.csv",
                "remote_file_path": remote.path(remote.root / f"{name}.csv"),
            }
            for name in ("one", "two")
        },
    )
    result = run_cli(["-m", "dataferry", "run", "--all"], remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "all").iterdir() if not is_bookkeeping(p.name))
    assert names == ["one.csv", "two.csv"]


def test_demo_runs_the_shipped_config(tmp_path: Path) -> None:
    shutil.copy(REPO / "config.json", tmp_path / "config.json")
    result = run_cli(["-m", "dataferry", "demo", "--size", "600K"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/task1/january-small.csv").stat().st_size > 0
    assert list((tmp_path / "data/task2").rglob("february-small.csv"))
    march = sorted(p.name for p in (tmp_path / "data/task3").iterdir())
    assert "march small 2.csv" in march
    assert not [name for name in march if not name.endswith(".csv") and not is_bookkeeping(name)]
    assert "total" in result.stdout
    # Runs again over its own output (the shipped config overwrites).
    assert run_cli(["-m", "dataferry", "demo", "--size", "600K"], {}, tmp_path).returncode == 0


@pytest.mark.parametrize(
    "args", [["demo", "--size", "600K"], ["serve", "somewhere", "--sample", "1M"]]
)
def test_demo_and_serve_without_the_devserver_package(args: list[str], tmp_path: Path) -> None:
    """As in the production image (Dockerfile.prod): dataferry without dataferry.devserver."""
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "src" / "dataferry",
        site / "dataferry",
        ignore=lambda folder, names: ["devserver"] if folder.endswith("dataferry") else [],
    )
    assert not (site / "dataferry" / "devserver").exists()
    shutil.copy(REPO / "config.json", tmp_path / "config.json")
    result = subprocess.run(
        [sys.executable, "-m", "dataferry", *args],
        env={"PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert_one_line_error(result, 2, "the development server is not part of this installation")
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "somewhere").exists()


def test_config_errors_win_over_the_early_connection(remote: Remote, tmp_path: Path) -> None:
    """The login starts while the config is validated; a config error is still
    the one reported, and what the login did meanwhile is not hidden."""
    write_config(
        tmp_path,
        {"bad": {"file_save_path": "./x", "remote_file_path": "/x", "max_tries": "abc"}},
    )
    bad = ["-m", "dataferry", "run", "bad"]
    env = remote.env()
    assert_one_line_error(
        run_cli(bad, {**env, "REMOTE_PORT": "http"}, tmp_path), 2, "bad.max_tries"
    )
    flags = run_args("x", "/x")
    no_config = tmp_path / "elsewhere"
    no_config.mkdir()
    assert_one_line_error(
        run_cli(flags, {**env, "REMOTE_PORT": "http"}, no_config), 2, "REMOTE_PORT"
    )
    known = tmp_path / "fresh_known_hosts"
    trusting = {**env, "SSH_KNOWN_HOSTS": str(known), "SSH_HOST_KEY_POLICY": "accept-new"}
    result = run_cli(bad, trusting, tmp_path)
    assert_one_line_error(result, 2, "bad.max_tries")
    if known.exists():  # the login got as far as the host key before it was closed
        assert "trusting new host" in result.stderr


def test_early_connection_logs_follow_the_log_level(remote: Remote, tmp_path: Path) -> None:
    (remote.root / "a.csv").write_text("a\n")
    run = run_args("./a.csv", remote.path(remote.root / "a.csv"), "--overwrite", "true")
    run.append("--log-level")
    debug = run_cli([*run, "DEBUG"], remote.env(), tmp_path)
    assert debug.returncode == 0, debug.stderr
    connecting = debug.stderr.find("dataferry.ssh: connecting to")
    assert 0 <= connecting < debug.stderr.find("dataferry.ssh: connected to")
    assert "using the TCP connection opened at start-up" in debug.stderr
    quiet = run_cli([*run, "WARNING"], remote.env(), tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


def test_run_all_needs_tasks(remote: Remote, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"common": {"overwrite": true}}')
    assert_one_line_error(
        run_cli(["-m", "dataferry", "run", "--all"], remote.env(), tmp_path),
        2,
        "no task sections",
    )


def test_run_all_logs_in_once(remote: Remote, tmp_path: Path) -> None:
    """Tasks of one run share the login while it works; a failed task closes it."""
    names = ("one", "two", "three")
    for name in names:
        (remote.root / f"{name}.csv").write_text(name)
    tasks = {
        name: {
            "file_save_path": f"./all/{name}.csv",
            "remote_file_path": remote.path(remote.root / f"{name}.csv"),
        }
        for name in names
    }
    write_config(tmp_path, tasks)
    with FaultProxy(remote.connection.port) as proxy:
        proxied = replace(remote, connection=through(remote.connection, proxy.port, tmp_path))
        result = run_cli(["-m", "dataferry", "run", "--all"], proxied.env(), tmp_path)
        assert result.returncode == 0, result.stderr
        assert proxy.connections == 1
    assert sorted(p.name for p in (tmp_path / "all").glob("*.csv")) == sorted(
        f"{name}.csv" for name in names
    )
    tasks["two"]["remote_file_path"] = remote.path(remote.root / "missing.csv")
    write_config(tmp_path, tasks, common={"retry_delay": 0, "force": True, "overwrite": True})
    with FaultProxy(remote.connection.port) as proxy:
        proxied = replace(remote, connection=through(remote.connection, proxy.port, tmp_path))
        result = run_cli(["-m", "dataferry", "run", "--all"], proxied.env(), tmp_path)
        assert result.returncode == 4, result.stderr
        assert "missing.csv" in result.stderr
        assert proxy.connections == 2  # one, then three after two's failure


def test_host_name_resolved_at_start_up(remote: Remote, tmp_path: Path) -> None:
    """The TCP connection opened at start-up looks the name up and tries each
    address (where localhost also means ::1, the servers do not listen there)."""
    (remote.root / "a.csv").write_text("a\n")
    port = remote.connection.port
    key = remote.connection.known_hosts.read_text().split()[1:3]
    known = tmp_path / "known_hosts_localhost"
    known.write_text(f"[localhost]:{port} {' '.join(key)}\n")
    env = {**remote.env(), "REMOTE_HOST_ADDRESS": "localhost", "SSH_KNOWN_HOSTS": str(known)}
    args = run_args("./a.csv", remote.path(remote.root / "a.csv"), "--log-level", "DEBUG")
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using the TCP connection opened at start-up" in result.stderr
    assert (tmp_path / "a.csv").read_text() == "a\n"


def test_all_with_a_path_flag_is_refused(tmp_path: Path) -> None:
    """Every task would write to the one path: exit 2 before anything happens."""
    write_config(
        tmp_path,
        {
            "a": {"file_save_path": "./a", "remote_file_path": "/a"},
            "b": {"file_save_path": "./b", "remote_file_path": "/b"},
        },
    )
    env = {
        "REMOTE_HOST_ADDRESS": "127.0.0.1",
        "USERNAME": "u",
        "PASSWORD": "p",
        "PATH": "/usr/bin:/bin",
    }
    result = run_cli(["-m", "dataferry", "run", "--all", "--file_save_path", "./x"], env, tmp_path)
    assert_one_line_error(result, 2, "--all runs every task", "--file_save_path")
    assert not (tmp_path / "x").exists()
