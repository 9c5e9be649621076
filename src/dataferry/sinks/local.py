"""The local-disk sink: resumable part files, atomic commits, staged extraction.

A download is written to ``.NAME.dataferry-part`` beside its final name, with
``.NAME.dataferry-part.json`` recording which remote file (path, size, mtime)
the partial bytes came from; a retry, or a later run after a crash, continues
from it when the remote file is unchanged. Only a complete, size-checked,
fsynced file is renamed to its final name. Bookkeeping files are opened
without following links and must be regular files, so a link planted at their
name cannot redirect a write outside the destination.

The destination lock lives outside the data (see :func:`lock_path`), never in
a folder the user did not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from .._exceptions import DestinationError, TransientError
from ..extract import (
    ArchiveKind,
    ExtractLimits,
    StagedFile,
    detect_archive_kind,
    extract_archive,
    extract_tar_stream,
    extract_zip_stream,
)
from ..sources import RemoteFile
from .base import Extracted, Held, PartWriter, RegionWriter, Sink

log = logging.getLogger("dataferry.sink")

PART_SUFFIX = ".dataferry-part"
# Flush to disk in the background every this many bytes of one file, so the
# final fsync has little left (docs/benchmarks.md: flush interval).
EARLY_SYNC_BYTES = 256 * 2**20
# Smaller files are simply fetched again after an interruption: no side file.
RESUME_MIN_BYTES = 1024 * 1024
LOCK_WAIT_SECONDS = 600.0

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


def sync_directory(directory: Path) -> None:
    """Make the renames into directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_directory() -> Path:
    """Where destination locks live: the user's runtime folder, outside any data."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "dataferry"
    return Path(tempfile.gettempdir()) / f"dataferry-{os.getuid()}"


def lock_path(destination: Path) -> Path:
    """The lock file of a destination folder, keyed by its absolute path."""
    key = hashlib.sha256(os.fsencode(os.path.abspath(destination))).hexdigest()[:24]
    return lock_directory() / f"{key}.lock"


def _open_nofollow(path: Path, flags: int) -> int:
    """Open a bookkeeping file without following a link; refuse anything but a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _read_meta(meta: Path) -> object:
    try:
        fd = _open_nofollow(meta, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            return json.loads(handle.read(65536))
        except ValueError:
            return None


def _write_meta(meta: Path, remote: RemoteFile) -> None:
    record = {"remote_path": remote.path, "size": remote.size, "mtime": remote.mtime}
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(meta).st_mode):
            os.unlink(meta)  # a planted link or other oddity: never write through it
    fd = _open_nofollow(meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record) + "\n")


class LocalPartWriter(PartWriter):
    def __init__(self, final: Path, remote: RemoteFile) -> None:
        self.final = final
        self.remote = remote
        self.part = part_path(final)
        self.meta = part_meta_path(final)
        self.resumable = remote.size >= RESUME_MIN_BYTES
        self.offset = 0
        self._fd = -1
        self._read_fd = -1  # opened only to hash a resumed prefix
        self._written = 0
        self._synced = 0
        self._flushing: asyncio.Future[None] | None = None

    def open(self) -> None:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            if self.resumable:
                self.offset = self._resume_offset()
                if self.offset == 0:
                    _write_meta(self.meta, self.remote)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(self.part).st_mode):
                    os.unlink(self.part)
            self._fd = _open_nofollow(self.part, os.O_WRONLY | os.O_CREAT)
            # Drop anything past the last complete block known to be good.
            os.ftruncate(self._fd, self.offset)
        except OSError as exc:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise destination_error(self.final.parent, exc) from None
        self._written = self._synced = self.offset

    def _resume_offset(self) -> int:
        recorded = _read_meta(self.meta)
        try:
            held = os.lstat(self.part)
        except OSError:
            return 0
        remote = self.remote
        from .local_regions import first_segment_prefix

        prefix = first_segment_prefix(recorded, remote)
        if prefix is not None:
            # Written in segments by several connections: only the first segment's
            # bytes are a prefix known to be good (the rest of the file is sparse).
            return min(prefix, held.st_size) if stat.S_ISREG(held.st_mode) else 0
        same_source = (
            isinstance(recorded, dict)
            and recorded.get("remote_path") == remote.path
            and recorded.get("size") == remote.size
            and recorded.get("mtime") == remote.mtime
        )
        if not same_source or not stat.S_ISREG(held.st_mode) or held.st_size > remote.size:
            return 0
        return held.st_size

    def held_prefix(self) -> Iterator[bytes]:
        remaining, position = self.offset, 0
        while remaining:
            chunk = os.pread(self._fd_for_reading(), min(remaining, 1 << 20), position)
            if not chunk:
                break
            position += len(chunk)
            remaining -= len(chunk)
            yield chunk

    def _fd_for_reading(self) -> int:
        if self._read_fd < 0:
            self._read_fd = _open_nofollow(self.part, os.O_RDONLY)
        return self._read_fd

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                # A short write (a file size limit, a full disk) is not an
                # error yet: the next one says why.
                done = os.pwrite(self._fd, view, self._written)
                self._written += done
                view = view[done:]
        except OSError as exc:
            raise self._error(exc) from None
        if self._written - self._synced >= EARLY_SYNC_BYTES and (
            self._flushing is None or self._flushing.done()
        ):
            if self._flushing is not None:
                self._raise_flush_error()
            # Start writing to disk while the transfer goes on, so the final
            # fsync has little left to do.
            self._synced = self._written
            self._flushing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, self._fd))

    def _raise_flush_error(self) -> None:
        assert self._flushing is not None
        try:
            self._flushing.result()
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> Exception:
        if exc.errno in _DISK_ERRNOS:
            return destination_error(self.part, exc)
        return exc

    async def _settle_flush(self) -> None:
        if self._flushing is not None:
            # The fd is closed next: let the background flush finish first.
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.shield(self._flushing)

    async def commit(self, mtime: int) -> str:
        try:
            if self._flushing is not None:
                await self._flushing
            os.utime(self._fd, (mtime, mtime))
            # In a thread: other files keep transferring while this one reaches the disk.
            await asyncio.to_thread(os.fsync, self._fd)
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            await self._close_fds()
        if self._written != self.remote.size:
            raise TransientError(
                f"{self.remote.path}: got {self._written} of {self.remote.size} bytes"
            )
        try:
            # Durable (fsync above) before it takes its final name; the folder
            # itself is synced once per run (Sink.finish).
            os.replace(self.part, self.final)
            if self.resumable:
                self.meta.unlink(missing_ok=True)
        except OSError as exc:
            raise destination_error(self.final, exc) from None
        return str(self.final)

    async def close(self) -> None:
        await self._settle_flush()
        await self._close_fds()

    async def _close_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


class _Staged:
    """Receives extraction's staged files (digests computed while writing) before they
    move into place, as results relative to the sink's root."""

    def __init__(
        self,
        root: Path,
        folder: Path,
        then: Callable[[list[Extracted]], None] | None,
    ) -> None:
        self.prefix = folder.relative_to(root).as_posix() if folder != root else ""
        self.then = then
        self.results: list[Extracted] = []

    def __call__(self, staged: list[StagedFile]) -> None:
        join = (lambda p: f"{self.prefix}/{p}") if self.prefix not in ("", ".") else (lambda p: p)
        self.results = [Extracted(join(f.relative), f.size, f.mtime, f.sha256) for f in staged]
        if self.then is not None:
            self.then(self.results)


class LocalSink(Sink):
    """A folder on a local filesystem: results go under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._touched: set[Path] = set()

    def describe(self, relative: str = "") -> str:
        return str(self.root / relative) if relative else str(self.root)

    def path(self, relative: str) -> Path:
        return self.root / relative

    @contextlib.contextmanager
    def lock(self, task: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        path = lock_path(self.root)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create {path.parent}: {exc.strerror}") from None
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning(
                "%s: another dataferry run is writing to %s; waiting up to %.0f s for it",
                task,
                self.root,
                wait,
            )
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise DestinationError(
                    f"{task}: another dataferry run still writes to {self.root} after "
                    f"{wait:.0f} s; let it finish (or stop it) and run again"
                ) from None
        except OSError as exc:
            raise DestinationError(f"cannot lock {path}: {exc.strerror}") from None
        try:
            yield
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                path.unlink()

    def held(self, relative: str) -> Held | None:
        try:
            found = os.lstat(self.root / relative)
        except OSError:
            return None
        if not stat.S_ISREG(found.st_mode):
            return None
        return Held(found.st_size, int(found.st_mtime))

    def exists(self, relative: str) -> bool:
        return os.path.lexists(self.root / relative)

    def has_partial(self, relative: str) -> bool:
        return os.path.lexists(part_path(self.root / relative))

    def free_space(self) -> int | None:
        """What an unprivileged writer may still use on the root's filesystem (the
        nearest existing folder: the root may not exist yet)."""
        folder = self.root.absolute()
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        try:
            found = os.statvfs(folder)
        except OSError:
            return None
        return found.f_bavail * found.f_frsize

    def partial_bytes(self, relative: str) -> int:
        try:
            return os.lstat(part_path(self.root / relative)).st_size
        except OSError:
            return 0

    async def open_part(self, relative: str, source: RemoteFile) -> LocalPartWriter:
        writer = LocalPartWriter(self.root / relative, source)
        writer.open()
        self._touched.add(writer.final.parent)
        return writer

    async def open_regions(
        self, relative: str, source: RemoteFile, segments: list[tuple[int, int]]
    ) -> RegionWriter:
        from .local_regions import LocalRegionWriter

        writer = LocalRegionWriter(self.root / relative, source, segments)
        writer.open()
        self._touched.add(writer.final.parent)
        return writer

    async def finish(self) -> None:
        folders, self._touched = self._touched, set()
        for folder in folders:
            try:
                await asyncio.to_thread(sync_directory, folder)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise destination_error(folder, exc) from None

    def remove(self, relative: str) -> None:
        path = self.root / relative
        try:
            path.unlink()
        except OSError as exc:
            raise destination_error(path, exc) from None

    def extract_file(
        self,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
        before_install: Callable[[list[Extracted]], None] | None = None,
    ) -> list[Extracted]:
        archive = self.root / relative
        staged = _Staged(self.root, archive.parent, before_install)
        extract_archive(
            archive,
            archive.parent,
            overwrite=overwrite,
            owned=self._owned(owned),
            before_install=staged,
            limits=limits,
            kind=kind,
        )
        return staged.results

    def extract_stream(
        self,
        stream: BinaryIO,
        size: int,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
        before_install: Callable[[list[Extracted]], None] | None = None,
    ) -> list[Extracted]:
        archive = self.root / relative
        staged = _Staged(self.root, archive.parent, before_install)
        if kind is ArchiveKind.ZIP:
            extract_zip_stream(
                stream,
                size,
                archive.parent,
                name=archive.name,
                overwrite=overwrite,
                owned=self._owned(owned),
                before_install=staged,
                limits=limits,
            )
        else:
            extract_tar_stream(
                stream,
                archive.parent,
                name=archive.name,
                compression=kind,
                overwrite=overwrite,
                owned=self._owned(owned),
                before_install=staged,
                limits=limits,
            )
        return staged.results

    def _owned(self, owned: frozenset[str]) -> frozenset[Path]:
        return frozenset(self.root / relative for relative in owned)

    def open_result(self, relative: str) -> BinaryIO:
        fd = _open_nofollow(self.root / relative, os.O_RDONLY)
        return os.fdopen(fd, "rb")

    def archive_kind(self, relative: str) -> ArchiveKind | None:
        return detect_archive_kind(self.root / relative)
