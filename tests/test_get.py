"""``dataferry get SOURCE DEST``: scp-style and sftp:// sources, the remote home,
globs, archives; against a real sshd whose SFTP sessions start in a folder of
the test's (``internal-sftp -d``), which stands for the remote home.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataferry._connection import ENV_VARIABLES
from dataferry._exceptions import ConfigError
from dataferry.cli.commands.get import parse_source, split_glob
from tests.support.remote import Remote, run_args, run_cli
from tests.support.sshd import OpenSSHServer, running_sshd, sshd_available


@pytest.fixture(scope="module")
def home_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenSSHServer, Path]]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("remote-home")
    workdir = tmp_path_factory.mktemp("sshd-get")
    with running_sshd(workdir, [f"ForceCommand internal-sftp -d {home}"]) as server:
        yield server, home


def _env(server: OpenSSHServer, tmp_path: Path, **values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ENV_VARIABLES and key != "SSH_AUTH_SOCK"
    }
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host databox\n  HostName {server.host}\n  Port {server.port}\n  User {server.username}\n"
    )
    env.update(
        SSH_KEY_FILE=str(server.client_key),
        SSH_KNOWN_HOSTS=str(server.write_known_hosts(tmp_path / "known_hosts")),
        SSH_CONFIG_FILE=str(config),
        HOME=str(tmp_path / "home"),
    )
    env.update(values)
    return env


def _get(
    server: OpenSSHServer, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(["-m", "dataferry", "get", *args], _env(server, tmp_path, **env), tmp_path)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_sftp_url_with_port_to_a_file(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    (home / "url.csv").write_text("u\n1\n")
    source = f"sftp://{server.username}@{server.host}:{server.port}{home}/url.csv"
    result = _get(server, tmp_path, source, "out/url.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "url.csv").read_text() == "u\n1\n"


def test_alias_and_a_path_relative_to_the_remote_home(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    (home / "rel").mkdir(exist_ok=True)
    (home / "rel" / "a.csv").write_text("a\n")
    for number, source in enumerate(("databox:rel/a.csv", "databox:~/rel/a.csv")):
        result = _get(server, tmp_path, source, f"got{number}.csv")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"got{number}.csv").read_text() == "a\n"


def test_existing_folder_receives_the_file(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    (home / "into.csv").write_text("i\n")
    (tmp_path / "folder").mkdir()
    result = _get(server, tmp_path, "databox:into.csv", "folder")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "folder" / "into.csv").read_text() == "i\n"


def test_glob_fetches_the_matching_files_and_extracts_archives(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    data = home / "globbed"
    data.mkdir()
    (data / "2024-01.csv.zip").write_bytes(_zip({"2024-01.csv": b"jan\n"}))
    (data / "2024-02.csv.zip").write_bytes(_zip({"2024-02.csv": b"feb\n"}))
    (data / "2023-12.csv.zip").write_bytes(_zip({"2023-12.csv": b"dec\n"}))
    result = _get(server, tmp_path, f"databox:{data}/2024-*.csv.zip", "out/")
    assert result.returncode == 0, result.stderr
    got = sorted(path.name for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert got == ["2024-01.csv", "2024-02.csv"]


def test_no_extract_keeps_the_archive(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    archive = _zip({"inside.csv": b"x\n"})
    (home / "keep.zip").write_bytes(archive)
    result = _get(server, tmp_path, "databox:keep.zip", "kept/", "--no-extract")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kept" / "keep.zip").read_bytes() == archive
    assert not (tmp_path / "kept" / "inside.csv").exists()


def test_missing_remote_file_is_exit_4(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, _ = home_server
    result = _get(server, tmp_path, "databox:no-such.csv", "x.csv")
    assert result.returncode == 4, result.stderr
    assert "no-such.csv" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("just-a-path", "expected [user@]host:path"),
        ("sftp://host:99999/x", "port is not a number"),
        ("sftp://u:pw@host/x", "a password in the URL"),
        ("host:~bob/x", "~user paths are not supported"),
        ("host:/data/*/x.csv", "only the last part may be a glob"),
    ],
)
def test_bad_sources_are_one_line_exit_2(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path, source: str, message: str
) -> None:
    server, _ = home_server
    result = _get(server, tmp_path, source, "x.csv")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "pw" not in lines[0].replace("password", "")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("box:", (None, "box", None, ".")),
        ("u@box:~/d/x.csv", ("u", "box", None, "d/x.csv")),
        ("[::1]:/abs", (None, "::1", None, "/abs")),
        ("sftp://u@box:2222/~/d", ("u", "box", 2222, "d")),
        ("sftp://box/data/a%20b.csv", (None, "box", None, "/data/a b.csv")),
    ],
)
def test_parse_source(text: str, parsed: tuple[str | None, str, int | None, str]) -> None:
    source = parse_source(text)
    assert (source.user, source.host, source.port, source.path) == parsed


def test_split_glob() -> None:
    assert split_glob("/data/2024-*.csv.zip") == ("/data", "2024-*.csv.zip")
    assert split_glob("data/x.csv") == ("data/x.csv", None)
    assert split_glob("*.csv") == (".", "*.csv")
    with pytest.raises(ConfigError):
        split_glob("/d[1]/x")


def test_folder_source_uses_the_task_defaults_and_include(
    home_server: tuple[OpenSSHServer, Path], tmp_path: Path
) -> None:
    server, home = home_server
    folder = home / "folder-src"
    folder.mkdir()
    (folder / "a.csv").write_text("a\n")
    (folder / "notes.txt").write_text("n\n")
    result = _get(server, tmp_path, "databox:folder-src", "default/")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "default").iterdir()) == ["a.csv"]
    result = _get(server, tmp_path, "databox:folder-src", "all/", "--include", "*")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "all").iterdir()) == ["a.csv", "notes.txt"]


def test_a_glob_as_a_config_tasks_remote_path(remote: Remote, tmp_path: Path) -> None:
    """remote_file_path may be a glob in config.json and as a flag, not only in get."""
    data = remote.root / "drops"
    data.mkdir()
    (data / "2024-01.csv.zip").write_bytes(_zip({"2024-01.csv": b"jan\n"}))
    (data / "2024-02.csv").write_bytes(b"feb\n")
    (data / "2023-12.csv").write_bytes(b"dec\n")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"common": {}, "t": {"file_save_path": "out", "remote_file_path": "x"}})
    )
    pattern = remote.path(data) + "/2024-*"
    result = run_cli(
        ["-m", "dataferry", "run", "t", "--config", str(config), "--remote_file_path", pattern],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    got = sorted(path.name for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert got == ["2024-01.csv", "2024-02.csv"]
    both = run_cli(
        [*run_args(tmp_path / "o2", pattern), "--include", "*.csv"], remote.env(), tmp_path
    )
    assert both.returncode == 2
    assert "is a glob already: leave out include" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1
    folder_glob = run_cli(run_args(tmp_path / "o3", "/dr*/x.csv"), remote.env(), tmp_path)
    assert folder_glob.returncode == 2
    assert "only the last part may be a glob" in folder_glob.stderr
