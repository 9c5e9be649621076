"""What a new user hits first (issue 15): each mistake is one line, its exit code, and
nothing half done; sizes read and typed one way."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataferry._exceptions import ConfigError, DestinationError
from dataferry._settings import ConfigFile, resolve_task
from dataferry.cli import main
from dataferry.engine.space import check_free_space, zip_extracted_size
from dataferry.observe.units import format_bytes, parse_size
from dataferry.plan import PlannedFile
from dataferry.sinks.local import LocalSink, part_meta_path, part_path
from tests.support.memory import MemoryServer, MemorySource
from tests.support.remote import REPO, Remote, random_bytes, run_args, run_cli


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (440_000_000, "440.0 MB"),
        (1_100_000_000, "1.1 GB"),
        (2**30, "1.1 GB"),  # 1 GiB in the one (decimal) convention
        (999_960_000, "1.0 GB"),  # never "1000.0 MB"
    ],
)
def test_one_size_format(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("64G", 64 * 10**9),
        ("64g", 64 * 10**9),
        ("64GB", 64 * 10**9),
        ("50M", 50 * 10**6),
        ("1.5k", 1500),
        ("64GiB", 64 * 2**30),
        ("250000", 250_000),
    ],
)
def test_one_size_parser(text: str, count: int) -> None:
    assert parse_size(text) == count


def write_config(folder: Path, task: dict[str, object]) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({"t": {"file_save_path": "x", "remote_file_path": "/x", **task}}))
    return path


def test_max_extract_bytes_takes_a_unit(tmp_path: Path) -> None:
    config = ConfigFile.load(write_config(tmp_path, {"max_extract_bytes": "64G"}))
    assert resolve_task("t", config).max_extract_bytes == 64 * 10**9
    bad = ConfigFile.load(write_config(tmp_path, {"max_extract_bytes": "lots"}))
    with pytest.raises(ConfigError) as caught:
        resolve_task("t", bad)
    message = str(caught.value)
    assert "t.max_extract_bytes" in message and "64G" in message and "\n" not in message


# ------------------------------------------------------------ flags


def test_verify_in_capitals_is_accepted(tmp_path: Path) -> None:
    assert (
        resolve_task(
            "t", None, {"file_save_path": "x", "remote_file_path": "/x", "verify": "SHA256"}
        ).verify
        == "sha256"
    )


def test_unknown_flag_shows_the_usage_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "task_1", "--no-such-flag"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dataferry run ")
    assert "dataferry run: error: unrecognized arguments: --no-such-flag" in err


# ------------------------------------------------------------ errors


def test_unresolvable_host_is_one_line_at_once(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REMOTE_PORT", "SSH_KEY_FILE", "SSH_KNOWN_HOSTS")
    }
    env.update(REMOTE_HOST_ADDRESS="no-such-host.invalid", USERNAME="u", PASSWORD="p")
    args = run_args("out.csv", "/data/x.csv", "--max_tries", "3", "--retry_delay", "30")
    result = run_cli(args, env, tmp_path, timeout=25)  # three tries would wait 30 s and more
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("dataferry: error: t: cannot connect to ")
    assert "'no-such-host.invalid' does not resolve" in line and "REMOTE_HOST_ADDRESS" in line
    assert not list(tmp_path.glob("out*"))


def test_errors_name_the_task(remote: Remote, tmp_path: Path) -> None:
    result = run_cli(
        run_args("out.csv", remote.path(remote.root / "missing.csv")), remote.env(), tmp_path
    )
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("dataferry: error: t: "), line


def test_resume_says_what_is_left(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "k.bin"
    source.write_bytes(random_bytes(3_000_000, 5))
    save = tmp_path / "k.bin"
    part_path(save).write_bytes(source.read_bytes()[:1_000_000])
    meta = {
        "remote_path": remote.path(source),
        "size": 3_000_000,
        "mtime": int(source.stat().st_mtime),
    }
    part_meta_path(save).write_text(json.dumps(meta))
    args = run_args(save, remote.path(source), "--log-level", "INFO")
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"resuming {remote.path(source)}: 2.0 MB of 3.0 MB left" in result.stderr
    assert save.read_bytes() == source.read_bytes()


# ------------------------------------------------------------ free space


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of size mounted at path (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_not_enough_free_space_is_exit_7_before_writing(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "set"
    folder.mkdir()
    for n in range(3):
        (folder / f"part-{n}.csv").write_bytes(random_bytes(1_000_000, n))
    with small_filesystem(tmp_path / "small", "1m") as small:
        result = run_cli(
            run_args(small / "out/", remote.path(folder), "--include", "*.csv"),
            remote.env(),
            tmp_path,
        )
        assert result.returncode == 7, result.stderr
        line = one_line(result.stderr)
        assert line.startswith("dataferry: error: t: not enough free space in ")
        assert "3.0 MB left to fetch, 1.0 MB free" in line
        assert os.listdir(small) == []  # nothing written, not even the folder


# ------------------------------------------------------------ the seed's scripts


def test_seed_script_with_an_interpreter_lacking_the_packages_names_the_one_to_use(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, {})
    # -S: no site-packages, like the system's python3 on a fresh machine.
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            str(REPO / "src" / "task_1.py"),
            "--task",
            "t",
            "--config_file",
            "config.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("dataferry: error: the Python package ")
    assert f"is not installed for {sys.executable}" in line and ".venv/bin/python" in line
    assert "please report" not in line


# ------------------------------------------------------------ what zips unpack to


def zip_bytes(
    entries: dict[str, bytes], *, force_zip64: bool = False, prefix: bytes = b""
) -> bytes:
    buffer = io.BytesIO()
    buffer.write(prefix)
    with zipfile.ZipFile(buffer, "a" if prefix else "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            with archive.open(name, "w", force_zip64=force_zip64) as entry:
                entry.write(data)
        archive.comment = b"x" * 300
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("plain", {}),
        ("zip64 entries", {"force_zip64": True}),
        ("data before the zip", {"prefix": b"#!/bin/sh\n" * 100}),
    ],
)
def test_zip_extracted_size_from_the_central_directory(
    variant: str, options: dict[str, Any]
) -> None:
    entries = {f"f{n}.csv": bytes(10_000 * (n + 1)) for n in range(40)}
    server = MemoryServer(block_size=4096)  # replies capped: the tail takes several reads
    file = server.put("/a.zip", zip_bytes(entries, **options))
    size = asyncio.run(zip_extracted_size(MemorySource(server), file))
    assert size == sum(len(data) for data in entries.values()), variant


def test_zip_extracted_size_unknown_for_other_files() -> None:
    server = MemoryServer()
    plain = server.put("/a.zip", random_bytes(100_000, 1))
    whole = zip_bytes({"a": bytes(1000)})
    cut = server.put("/b.zip", whole[: whole.rfind(b"PK\x05\x06") + 10])  # end record cut
    tiny = server.put("/c.zip", b"PK")
    for file in (plain, cut, tiny):
        assert asyncio.run(zip_extracted_size(MemorySource(server), file)) is None, file.path


class SinkWithFreeSpace(LocalSink):
    def __init__(self, root: Path, free: int) -> None:
        super().__init__(root)
        self.free = free

    def free_space(self) -> int | None:
        return self.free


def test_free_space_counts_what_zips_unpack_to(tmp_path: Path) -> None:
    server = MemoryServer()
    archive = server.put("/d/a.zip", zip_bytes({"big.csv": bytes(5_000_000)}))
    plain = server.put("/d/b.csv", b"x" * 1000)
    todo = [PlannedFile(archive, "a.zip"), PlannedFile(plain, "b.csv")]
    source = MemorySource(server)
    downloads = archive.size + plain.size
    limits: dict[str, Any] = {"max_extract_bytes": 10**12, "max_ratio": 10**6}
    roomy = SinkWithFreeSpace(tmp_path, downloads + 5_000_000)
    asyncio.run(check_free_space("t", roomy, source, todo, **limits))
    assert server.reads > 0  # the limits allowed more than the room: the zip was read
    tight = SinkWithFreeSpace(tmp_path, downloads + 4_000_000)
    with pytest.raises(DestinationError) as caught:
        asyncio.run(check_free_space("t", tight, source, todo, **limits))
    message = str(caught.value)
    assert message.startswith("t: not enough free space in ")
    assert "its zip archives unpack to 5.0 MB" in message and "nothing was written" in message
    # Unknown free space (an object store): no check.
    unknown = LocalSink(tmp_path)
    unknown.free_space = lambda: None  # type: ignore[method-assign]
    asyncio.run(check_free_space("t", unknown, source, todo, **limits))
    # Room for whatever extraction would allow: the zip is not even read.
    server.reads = 0
    capped = {"max_extract_bytes": 1_000_000, "max_ratio": 1000.0}
    asyncio.run(check_free_space("t", tight, source, todo, **capped))
    assert server.reads == 0


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_a_zip_that_would_not_fit_unpacked_is_exit_7(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "zeros.zip"
    source.write_bytes(zip_bytes({"zeros.bin": bytes(3_000_000)}))
    with small_filesystem(tmp_path / "small", "1m") as small:
        result = run_cli(run_args(small / "z.zip", remote.path(source)), remote.env(), tmp_path)
        assert result.returncode == 7, result.stderr
        line = one_line(result.stderr)
        assert "its zip archives unpack to 3.0 MB" in line and "1.0 MB free" in line
        assert os.listdir(small) == []
