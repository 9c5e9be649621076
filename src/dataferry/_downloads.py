"""Resumable, pipelined, atomic downloads of single remote files.

A download is written to ``.NAME.dataferry-part`` beside its destination, with
``.NAME.dataferry-part.json`` recording which remote file (size, mtime) the
partial bytes came from. A retry, or a later run after a crash, continues from
the partial file when the remote file is unchanged. Only a complete, size-checked,
fsynced file is renamed to its final name: a final name never holds half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# First: asyncssh without its slow library search (see _startup.py).
from . import _startup  # noqa: F401  # isort: skip

import asyncssh

from ._exceptions import DestinationError
from ._observer import TaskObserver
from ._ssh import RemoteFile, RemoteSession, TransientError, translate_sftp_errors

log = logging.getLogger("dataferry.download")

PART_SUFFIX = ".dataferry-part"
# OpenSSH's sftp-server answers reads of up to 255 KiB; larger requests come
# back short and cost an extra round trip.
DEFAULT_BLOCK_SIZE = 255 * 1024
MAX_BLOCK_SIZE = 1024 * 1024
# Flush to disk in the background every this many bytes of one file, so the
# final fsync has little left. 1 GiB over loopback, median of 4, ratio to scp:
# 1.03-1.06 flushing every 64 MiB, 0.95-0.98 every 256 MiB, 1.00 never.
EARLY_SYNC_BYTES = 256 * 2**20
# Smaller files are simply fetched again after an interruption: no side file.
RESUME_MIN_BYTES = 1024 * 1024
# Requests in flight: enough to cover bandwidth x round trip on a far link, but
# few on a near one, where OpenSSH slows down as replies queue in its buffers.
# Measured here, 512 MiB over loopback: 0.75 s with 16 reads of 255 KiB in
# flight, 1.45 s with 64, 2.6 s with 128; 1 GiB over loopback (median of 6,
# to disk): 1.75 s with 6 or 8, 1.79 s with 12, 1.88 s with 16 (to memory, 24:
# ~3.1 s); 200 MB at 30 ms RTT: 1.75 s with 16, 0.95 s with 32, 0.87 s with 48-64.
MIN_REQUESTS_IN_FLIGHT = 8
MAX_REQUESTS_IN_FLIGHT = 64
TARGET_RATE = 320 * 2**20  # bytes/s the request budget is sized for (47 at 30 ms)
DEFAULT_REQUESTS_IN_FLIGHT = MAX_REQUESTS_IN_FLIGHT


def requests_budget(session: RemoteSession) -> int:
    """Reads to keep in flight on this connection, from its measured round trip."""
    if not math.isfinite(session.round_trip):
        return MAX_REQUESTS_IN_FLIGHT  # not measured yet: assume a far link
    block = _block_size(session)
    needed = MIN_REQUESTS_IN_FLIGHT + math.ceil(session.round_trip * TARGET_RATE / block)
    return min(MAX_REQUESTS_IN_FLIGHT, needed)


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def part_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PART_SUFFIX}")


def part_meta_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PART_SUFFIX}.json")


def destination_error(path: Path, exc: OSError) -> DestinationError:
    reason = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for this filesystem or limit",
        errno.EROFS: "read-only filesystem",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return DestinationError(f"cannot write {path}: {reason}")


@dataclass
class DownloadResult:
    remote: RemoteFile
    path: Path
    resumed_from: int
    bytes_transferred: int


def _resume_offset(part: Path, meta: Path, remote: RemoteFile) -> int:
    """Bytes already held for this exact remote file, or 0 to start over."""
    try:
        recorded = json.loads(meta.read_text())
        held = part.stat().st_size
    except (OSError, ValueError):
        return 0
    same_source = (
        isinstance(recorded, dict)
        and recorded.get("remote_path") == remote.path
        and recorded.get("size") == remote.size
        and recorded.get("mtime") == remote.mtime
    )
    if not same_source or held > remote.size:
        return 0
    return held


def _write_meta(meta: Path, remote: RemoteFile) -> None:
    record = {"remote_path": remote.path, "size": remote.size, "mtime": remote.mtime}
    meta.write_text(json.dumps(record) + "\n")


def sync_directory(directory: Path) -> None:
    """Make the renames into directory durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def download_file(
    session: RemoteSession,
    handle: asyncssh.SFTPClientFile,
    remote: RemoteFile,
    final: Path,
    observer: TaskObserver,
    *,
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
    expected_sha256: str | None = None,
    on_written: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Fetch remote (open as handle; the caller closes it) into final, resuming a partial file.

    With expected_sha256, the digest is computed from the bytes as they are
    written (plus the partial prefix on resume) and must match before the
    file takes its final name. on_written(n) is called each time the partial
    file's clean prefix grows to n bytes (an extractor may follow it).
    """
    part, meta = part_path(final), part_meta_path(final)
    resumable = remote.size >= RESUME_MIN_BYTES
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        offset = _resume_offset(part, meta, remote) if resumable else 0
        if offset == 0 and resumable:
            _write_meta(meta, remote)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise destination_error(final.parent, exc) from None
    if offset:
        log.info("resuming %s at %d of %d bytes", remote.path, offset, remote.size)
    observer.file_started(remote.path, remote.size, offset)
    try:
        # Drop anything past the last complete block we know is good.
        os.ftruncate(fd, offset)
        digest = _hash_prefix(part, offset) if expected_sha256 else None
        block_size = _block_size(session)
        with translate_sftp_errors(remote.path):
            await _pipelined_copy(
                handle,
                fd,
                remote,
                offset,
                block_size,
                requests_in_flight,
                observer,
                digest,
                on_written,
            )
        os.utime(fd, (remote.mtime, remote.mtime))
        # In a thread: other files keep transferring while this one reaches the disk.
        await asyncio.to_thread(os.fsync, fd)
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS:
            raise destination_error(part, exc) from None
        raise
    finally:
        os.close(fd)
    held = part.stat().st_size
    if held != remote.size:
        raise TransientError(f"{remote.path}: got {held} of {remote.size} bytes")
    if digest is not None and digest.hexdigest() != expected_sha256:
        # Start over on the next try: the partial bytes cannot be trusted.
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise TransientError(
            f"{remote.path}: sha256 mismatch (remote {expected_sha256}, received "
            f"{digest.hexdigest()})"
        )
    try:
        # The data is durable (fsync above) before it takes its final name. The
        # folder itself is synced once per task (sync_directory), not per file.
        os.replace(part, final)
        if resumable:
            meta.unlink(missing_ok=True)
    except OSError as exc:
        raise destination_error(final, exc) from None
    observer.file_finished(remote.path, str(final), remote.size)
    log.debug("saved %s (%d bytes)", final, remote.size)
    return DownloadResult(remote, final, offset, remote.size - offset)


def _hash_prefix(part: Path, length: int) -> hashlib._Hash:
    """The digest of the bytes a resumed download already holds."""
    digest = hashlib.sha256()
    with part.open("rb") as handle:
        remaining = length
        while remaining:
            chunk = handle.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest


def _block_size(session: RemoteSession) -> int:
    limit = session.sftp.limits.max_read_len
    return min(limit, MAX_BLOCK_SIZE) if limit else DEFAULT_BLOCK_SIZE


async def _read_bytes(handle: asyncssh.SFTPClientFile, length: int, offset: int) -> bytes:
    data = await handle.read(length, offset)
    assert isinstance(data, bytes)  # opened in binary mode
    return data


async def _pipelined_copy(
    handle: asyncssh.SFTPClientFile,
    fd: int,
    remote: RemoteFile,
    start: int,
    block_size: int,
    requests_in_flight: int,
    observer: TaskObserver,
    digest: hashlib._Hash | None,
    on_written: Callable[[int], None] | None,
) -> None:
    """Keep many read requests in flight; write replies in order.

    Writing strictly in order keeps the partial file a clean prefix of the
    remote file, which is what makes resuming safe.
    """
    end = remote.size
    next_offset = start
    write_offset = start
    synced_offset = start
    flushing: asyncio.Future[None] | None = None
    pending: deque[tuple[int, int, asyncio.Task[bytes]]] = deque()

    def read(offset: int, length: int) -> asyncio.Task[bytes]:
        return asyncio.ensure_future(_read_bytes(handle, length, offset))

    try:
        while pending or next_offset < end:
            while next_offset < end and len(pending) < requests_in_flight:
                length = min(block_size, end - next_offset)
                pending.append((next_offset, length, read(next_offset, length)))
                next_offset += length
            offset, length, task = pending.popleft()
            data = await task
            while len(data) < length:
                # A short read (server cap or a file that shrank): fetch the rest now.
                more = await _read_bytes(handle, length - len(data), offset + len(data))
                if not more:
                    raise TransientError(
                        f"{remote.path}: file ended at {offset + len(data)} bytes, expected "
                        f"{remote.size}; it changed during the transfer"
                    )
                data += more
            os.pwrite(fd, data, write_offset)
            if digest is not None:
                digest.update(data)
            write_offset += length
            observer.bytes_received(remote.path, length)
            if on_written is not None:
                on_written(write_offset)
            if write_offset - synced_offset >= EARLY_SYNC_BYTES and (
                flushing is None or flushing.done()
            ):
                if flushing is not None:
                    flushing.result()  # raise a disk error now
                # Start writing to disk while the transfer goes on, so the final
                # fsync has little left to do (1 GiB at once took seconds here).
                synced_offset = write_offset
                flushing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, fd))
        if flushing is not None:
            await flushing
    finally:
        if flushing is not None and not flushing.done():
            # The caller closes fd next; let the background flush finish first.
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.shield(flushing)
        for _, _, task in pending:
            task.cancel()
        for _, _, task in pending:
            with contextlib.suppress(asyncio.CancelledError, asyncssh.Error, OSError):
                await task
