"""Misbehaving SFTP servers for tests: the embedded server with one switch each.

Each class changes one thing about dataferry's embedded read-only server
(``dataferry.devserver.server``), through asyncssh's documented server API.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh

from dataferry._connection import ENV_VARIABLES
from dataferry.devserver.server import EmbeddedSFTPServer, _ReadOnlySFTPServer
from tests.support.remote import REPO


class StallingReads(_ReadOnlySFTPServer):
    """Answers everything but reads, which it leaves unanswered (keepalives still flow)."""

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:  # type: ignore[override]
        await asyncio.sleep(3600)
        return b""


class ShortSizes(_ReadOnlySFTPServer):
    """Reports every regular file 100 bytes shorter than it is."""

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        found = super().stat(path)
        assert isinstance(found, os.stat_result)  # the base class stats the local file
        attrs = asyncssh.SFTPAttrs.from_local(found)
        if stat.S_ISREG(found.st_mode) and found.st_size > 100:
            attrs.size = found.st_size - 100
        return attrs


#: Names no filesystem holds, so only a server can send them.
UNSENDABLE_NAMES = (b"/", b"", b"a/b.csv", b"/etc/passwd", b"../escape.csv", b"nul\x00.csv")


class UnsendableNames(_ReadOnlySFTPServer):
    """Lists, in every folder, extra entries named as no file can be, each claiming
    to be a regular file of 2 MiB."""

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        async for entry in super().scandir(path):
            yield entry
        attrs = asyncssh.SFTPAttrs(
            type=asyncssh.FILEXFER_TYPE_REGULAR,
            size=2 << 20,
            permissions=stat.S_IFREG | 0o644,
            mtime=1_700_000_000,
        )
        for name in UNSENDABLE_NAMES:
            yield asyncssh.SFTPName(name, attrs=attrs)


class _Stalling(_ReadOnlySFTPServer):
    async def _stall(self) -> None:
        await asyncio.sleep(3600)


class StallingStats(_Stalling):
    """Never answers stat or lstat (the first request of every run)."""

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:  # type: ignore[override]
        await self._stall()
        raise AssertionError

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:  # type: ignore[override]
        await self._stall()
        raise AssertionError


class StallingOpens(_Stalling):
    """Lists and stats, but never answers an open."""

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:  # type: ignore[override]
        await self._stall()
        raise AssertionError

    async def open56(  # type: ignore[override]
        self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs
    ) -> object:
        await self._stall()
        raise AssertionError


class StallingFolderReads(_Stalling):
    """Answers stats, but a folder read never gets its entries."""

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        await self._stall()
        for entry in ():
            yield entry


async def run_cli_against(
    server_class: type[_ReadOnlySFTPServer], root: Path, args: list[str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (a subprocess, as a user would) against the embedded server
    changed by server_class, which serves root; the server runs in this process."""
    async with EmbeddedSFTPServer(root, sftp_server_class=server_class) as server:
        known = workdir / "known_hosts"
        server.write_known_hosts(known)
        env = {key: value for key, value in os.environ.items() if key not in ENV_VARIABLES}
        env.update(
            REMOTE_HOST_ADDRESS=server.connect_host,
            REMOTE_PORT=str(server.port),
            USERNAME=server.username,
            PASSWORD=server.password,
            SSH_KNOWN_HOSTS=str(known),
        )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return subprocess.CompletedProcess(
            args, process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )
