"""The Source conformance suite (tests/conformance/source_suite.py) run against each Source:
the in-memory fake used by unit tests, and the SFTP source against both real servers
(OpenSSH's sshd and the embedded server, through the ``remote`` fixture)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from dataferry._exceptions import RemotePathError
from dataferry.devserver.server import _ReadOnlySFTPServer
from dataferry.sources import RemoteFile, Source, SourceConnector
from dataferry.sources.ssh import SSHConnector
from dataferry.sources.ssh.session import DEFAULT_BLOCK_SIZE
from tests.conformance.source_suite import MTIME, SourceSuite, SourceWorld, in_session
from tests.support.memory import MemoryConnector, MemoryServer
from tests.support.remote import Remote


class MemoryWorld(SourceWorld):
    ROOT = "/data/test"

    def __init__(self) -> None:
        self.server = MemoryServer()

    def connector(self) -> SourceConnector:
        return MemoryConnector(self.server)

    def path(self, relative: str) -> str:
        return f"{self.ROOT}/{relative}" if relative else self.ROOT

    def put(self, relative: str, data: bytes, mtime: int = MTIME) -> str:
        return self.server.put(self.path(relative), data, mtime).path

    def shrink(self, relative: str, size: int) -> None:
        data, mtime = self.server.files[self.path(relative)]
        self.server.files[self.path(relative)] = (data[:size], mtime)

    @contextlib.contextmanager
    def short_replies(self) -> Iterator[int]:
        cap, self.server.block_size = self.server.block_size, 10_000
        try:
            yield self.server.block_size
        finally:
            self.server.block_size = cap


class TestMemorySource(SourceSuite):
    @pytest.fixture
    def source_world(self) -> SourceWorld:
        return MemoryWorld()


class SFTPWorld(SourceWorld):
    """Files under remote.root, served by sshd or the embedded server."""

    computes_digests = True
    EMBEDDED_CAP = 50_000

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def connector(self) -> SourceConnector:
        return SSHConnector(self.remote.connection)

    def _local(self, relative: str) -> Path:
        return self.remote.root / relative if relative else self.remote.root

    def path(self, relative: str) -> str:
        return self.remote.path(self._local(relative))

    def put(self, relative: str, data: bytes, mtime: int = MTIME) -> str:
        local = self._local(relative)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        os.utime(local, (mtime, mtime))
        return self.path(relative)

    def shrink(self, relative: str, size: int) -> None:
        os.truncate(self._local(relative), size)

    @contextlib.contextmanager
    def short_replies(self) -> Iterator[int]:
        if self.remote.kind == "openssh":
            # sftp-server answers at most 255 KiB per read, whatever is asked.
            yield DEFAULT_BLOCK_SIZE
            return
        original = _ReadOnlySFTPServer.read
        cap = self.EMBEDDED_CAP

        def capped(server: _ReadOnlySFTPServer, file_obj: object, offset: int, size: int) -> bytes:
            return original(server, file_obj, offset, min(size, cap))

        with mock.patch.object(_ReadOnlySFTPServer, "read", capped):
            yield cap


class TestSFTPSource(SourceSuite):
    @pytest.fixture
    def source_world(self, remote: Remote) -> SourceWorld:
        return SFTPWorld(remote)

    def test_special_file_is_refused_without_opening_it(self, remote: Remote) -> None:
        """A FIFO named explicitly: sshd's sftp-server would block on opening it, the
        embedded server refuses with a failure that used to be retried."""
        world = SFTPWorld(remote)
        world.put("data/real.csv", b"real")
        os.mkfifo(remote.root / "data" / "pipe.csv")
        pipe = world.path("data/pipe.csv")

        async def body(source: Source) -> None:
            with pytest.raises(RemotePathError, match="not a regular file") as caught:
                await source.find(pipe, ("*.csv",))
            assert pipe in str(caught.value)
            # In a folder it is simply not listed.
            listing = await source.find(world.path("data"), ("*.csv",))
            assert [f.name for f in listing.files] == ["real.csv"]

        in_session(world, body)

    def test_links_are_followed(self, remote: Remote) -> None:
        """A link to a file is that file; a link to a folder or nowhere is not listed."""
        world = SFTPWorld(remote)
        world.put("data/target.bin", b"target", mtime=MTIME)
        folder = remote.root / "data"
        (folder / "to-file.csv").symlink_to("target.bin")
        (folder / "to-folder.csv").symlink_to(remote.root)
        (folder / "dangling.csv").symlink_to("nowhere")

        async def body(source: Source) -> None:
            listing = await source.find(world.path("data"), ("*.csv",))
            assert listing.files == (RemoteFile(world.path("data/to-file.csv"), 6, MTIME),)
            (file,) = (await source.find(world.path("data/to-file.csv"), ("*",))).files
            assert file.size == 6
            reader = await source.open(file)
            try:
                assert await reader.read_range(0, 100) == b"target"
            finally:
                reader.close_later()

        in_session(world, body)
