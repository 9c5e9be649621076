"""A hostile or stuck server (issue 10, first part): stalled requests end the run in
time, sizes that lie are caught, names from the server never reach the disk or the
terminal unescaped. Names are planted on disk, so both real servers serve them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dataferry import TaskSettings, TransferError, run_task
from dataferry.devserver.server import EmbeddedSFTPServer
from tests.support.hostile import ShortSizes, StallingReads
from tests.support.remote import Remote, random_bytes, run_args, run_cli


def settings(remote_path: str, save: Path, **values: object) -> TaskSettings:
    return TaskSettings.model_validate(
        {"name": "t", "file_save_path": save, "remote_file_path": remote_path, "retry_delay": 0}
        | values
    )


async def run_against(server_class: type, root: Path, task: TaskSettings, known: Path) -> None:
    async with EmbeddedSFTPServer(root, sftp_server_class=server_class) as server:
        await run_task(task, server.connection_settings(known))


def test_a_server_that_stops_answering_reads_ends_the_run(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "big.bin").write_bytes(random_bytes(2 << 20, 1))
    task = settings("/big.bin", tmp_path / "out" / "big.bin", request_timeout=1, max_tries=2)
    started = time.monotonic()
    with pytest.raises(TransferError, match=r"failed after 2 tries: .*did not answer"):
        asyncio.run(run_against(StallingReads, root, task, tmp_path / "known_hosts"))
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out" / "big.bin").exists()


def test_a_listing_that_understates_the_size_is_not_saved_truncated(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "f.csv").write_bytes(b"x" * 5000)
    task = settings("/f.csv", tmp_path / "out" / "f.csv", max_tries=2)
    with pytest.raises(TransferError, match=r"longer than the 4900 bytes listed"):
        asyncio.run(run_against(ShortSizes, root, task, tmp_path / "known_hosts"))
    assert not (tmp_path / "out" / "f.csv").exists()


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
