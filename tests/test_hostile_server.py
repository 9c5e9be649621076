"""A hostile or stuck server (issue 10, first part): stalled requests end the run in
time, sizes that lie are caught, names from the server never reach the disk or the
terminal unescaped. Names are planted on disk, so both real servers serve them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import pytest

from dataferry.plan.names import is_bookkeeping
from tests.support.hostile import (
    ShortSizes,
    StallingFolderReads,
    StallingOpens,
    StallingReads,
    StallingStats,
    UnsendableNames,
    run_cli_against,
)
from tests.support.remote import Remote, random_bytes, run_args, run_cli, sshd_connection
from tests.support.sshd import running_sshd, sshd_available

HOSTILE = {
    "title\x1b]0;pwned\x07.csv": b"osc",
    "red\x1b[31m.csv": b"ansi",
    "forged\nINFO: all good.csv": b"newline",
    ".f.csv.dataferry-part": b"not ours",
    "x" * 256 + ".csv": b"too long",  # fine on the server's side only if it allows it
}


def test_hostile_names_are_skipped_and_shown_escaped(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "drop"
    folder.mkdir()
    (folder / "ok.csv").write_bytes(b"fine")
    planted = {}
    for name, data in HOSTILE.items():
        try:
            (folder / name).write_bytes(data)
            planted[name] = data
        except OSError:
            continue  # the local filesystem refuses it (a name too long): not planted
    assert len(planted) >= 4
    out = tmp_path / "out"
    result = run_cli(
        [*run_args(out, remote.path(folder)), "--include", "*"], remote.env(), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ok.csv"]
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\x07" not in stream
        assert "\nINFO: all good" not in stream
    assert "\\x1b" in result.stderr and "\\n" in result.stderr
    assert "a name dataferry uses for its own files" in result.stderr


def tree(root: Path, leave_out: Path) -> dict[str, bytes | None]:
    """Every path under root (but under leave_out) with a file's bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in root.rglob("*")
        if path != leave_out and leave_out not in path.parents
    }


def hostile_run(
    server_class: type, tmp_path: Path, remote_path: str, *flags: str, mine: bool = False
) -> tuple[subprocess.CompletedProcess[str], float, Path]:
    """The CLI against server_class serving tmp_path/srv into tmp_path/work/out (holding
    a file of the user's when mine): the result, the time it took, and the destination.
    Asserts that nothing outside the destination changed, and that the user's file
    is intact."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "known_hosts").touch()
    out = work / "out"
    if mine:
        out.mkdir()
        (out / "mine.txt").write_bytes(b"kept")
    before = tree(tmp_path, out)
    started = time.monotonic()
    result = asyncio.run(
        run_cli_against(server_class, tmp_path / "srv", run_args(out, remote_path, *flags), work)
    )
    elapsed = time.monotonic() - started
    before.pop("work/known_hosts")  # the harness writes the server's key there
    after = tree(tmp_path, out)
    after.pop("work/known_hosts")
    assert after == before, "something outside the destination changed"
    if mine:
        assert (out / "mine.txt").read_bytes() == b"kept"
    return result, elapsed, out


def results(out: Path) -> list[str]:
    """What the destination shows: partial files are kept (resumable), nothing else."""
    names = sorted(p.name for p in out.iterdir())
    assert all(is_bookkeeping(name) for name in names if name.startswith("."))
    return [name for name in names if not name.startswith(".")]


def no_raw_escapes(result: subprocess.CompletedProcess[str]) -> None:
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\x00" not in stream and "\x07" not in stream


@pytest.mark.parametrize("mine", [False, True], ids=["new-destination", "existing-destination"])
def test_names_only_a_server_can_send_are_skipped(tmp_path: Path, mine: bool) -> None:
    """ "/", "", "a/b", "/etc/passwd", "../x", NUL: each listed as a 2 MiB file. A listed
    "/" with --include '*' once replaced a not-yet-created destination by a file."""
    (tmp_path / "srv" / "drop").mkdir(parents=True)
    (tmp_path / "srv" / "drop" / "ok.csv").write_bytes(b"fine")
    (tmp_path / "srv" / "a").mkdir()
    (tmp_path / "srv" / "a" / "b.csv").write_bytes(b"from another folder")
    result, elapsed, out = hostile_run(
        UnsendableNames, tmp_path, "/drop", "--include", "*", "--request_timeout", "5", mine=mine
    )
    assert result.returncode == 0, result.stderr
    expected = ["mine.txt", "ok.csv"] if mine else ["ok.csv"]
    assert sorted(p.name for p in out.iterdir()) == expected
    assert (out / "ok.csv").read_bytes() == b"fine"
    no_raw_escapes(result)
    for shown_name in ("'/'", "''", "'a/b.csv'", "'/etc/passwd'", "'../escape.csv'", "nul\\x00"):
        assert shown_name in result.stderr, shown_name
    assert elapsed < 60


@pytest.mark.parametrize(
    ("server_class", "remote_path"),
    [(StallingStats, "/f.bin"), (StallingOpens, "/f.bin"), (StallingFolderReads, "/drop")],
    ids=["stat", "open", "folder-read"],
)
def test_a_server_that_stops_answering_ends_the_run_resumable(
    tmp_path: Path, server_class: type, remote_path: str
) -> None:
    (tmp_path / "srv" / "drop").mkdir(parents=True)
    (tmp_path / "srv" / "f.bin").write_bytes(random_bytes(1 << 20, 2))
    (tmp_path / "srv" / "drop" / "g.bin").write_bytes(b"g")
    result, elapsed, out = hostile_run(
        server_class,
        tmp_path,
        remote_path,
        "--request_timeout",
        "1",
        "--max_tries",
        "2",
        "--retry_delay",
        "0",
        mine=True,
    )
    assert result.returncode == 5, result.stderr
    assert "did not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert results(out) == ["mine.txt"]
    no_raw_escapes(result)
    # Two tries of at most a few deadlines each, plus connecting: far below the
    # hour the server would stall for.
    assert elapsed < 60


def test_a_server_that_stops_answering_reads_ends_the_run_resumable(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "big.bin").write_bytes(random_bytes(2 << 20, 1))
    result, elapsed, out = hostile_run(
        StallingReads,
        tmp_path,
        "/big.bin",
        "--request_timeout",
        "1",
        "--max_tries",
        "2",
        "--retry_delay",
        "0",
        mine=True,
    )
    assert result.returncode == 5, result.stderr
    assert re.search(r"failed after 2 tries: .*did not answer", result.stderr)
    assert results(out) == ["mine.txt"]
    no_raw_escapes(result)
    assert elapsed < 60


def test_a_listing_that_understates_the_size_is_not_saved_truncated(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.csv").write_bytes(b"x" * 5000)
    result, elapsed, out = hostile_run(
        ShortSizes, tmp_path, "/f.csv", "--max_tries", "2", "--retry_delay", "0", mine=True
    )
    assert result.returncode == 5, result.stderr
    assert "longer than the 4900 bytes listed" in result.stderr
    assert results(out) == ["mine.txt"]
    no_raw_escapes(result)
    assert elapsed < 60


def test_a_server_that_never_answers_the_sftp_init_ends_the_run(tmp_path: Path) -> None:
    """A real sshd whose sftp subsystem reads and never speaks (it ends when the
    connection does); sshd still answers keepalives. Starting SFTP has the target's
    ConnectTimeout (ssh_config) as its deadline, 20 s without one."""
    if sshd_available():
        pytest.skip(sshd_available())
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ConnectTimeout 2\n")
    out = tmp_path / "out"
    with running_sshd(tmp_path / "sshd", ["Subsystem sftp /bin/cat >/dev/null"]) as server:
        env = {
            **Remote("openssh", tmp_path, sshd_connection(server, tmp_path / "kh"), None).env(),
            "SSH_CONFIG_FILE": str(config),
        }
        started = time.monotonic()
        result = run_cli(
            run_args(out, "/x.bin", "--max_tries", "2", "--retry_delay", "0"), env, tmp_path
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 5, result.stderr
    assert "cannot start SFTP" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert elapsed < 30  # two tries of a 2 s deadline, not an hour
