"""Misbehaving SFTP servers for tests: the embedded server with one switch each.

Each class changes one thing about dataferry's embedded read-only server
(``dataferry.devserver.server``), through asyncssh's documented server API.
"""

from __future__ import annotations

import asyncio
import os
import stat

import asyncssh

from dataferry.devserver.server import _ReadOnlySFTPServer


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
