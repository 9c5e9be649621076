"""Writing: the staging directory, the writer, destination checks, moving into place.

Everything is written into ``StagingDirectory`` (a private directory inside
the destination) by ``StagingWriter``, which never follows a link and
creates every file with ``O_EXCL``.  ``DestinationCheck`` compares the
checked entries with what already exists in the destination (read only);
``install_staged`` then merges the staged tree into the destination.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from dataferry._exceptions import ArchiveError, DestinationError, OverwriteConflictError

from .checks import Entry, EntryChecker, EntryKind
from .reading import READ_CHUNK

_STAGING_PREFIX = ".dataferry-extract-"


@dataclass(frozen=True)
class StagedFile:
    """A regular file extraction is about to move into place."""

    relative: str  # POSIX path under the destination
    size: int
    mtime: int
    sha256: str


@dataclass(frozen=True)
class Placement:
    """What extraction may replace in the destination, and who hears before it does.

    owned: existing files dataferry wrote (recorded and unchanged since): they
    are replaced even when overwrite is off. before_install: called with every
    staged file right before the first one moves into place (the manifest's
    intent record), so a crash during the move leaves them known.
    """

    overwrite: bool
    owned: frozenset[Path] = frozenset()
    before_install: Callable[[list[StagedFile]], None] | None = None
    # Somewhere other than a staging folder inside dest_dir (an object store).
    target: ExtractionTarget | None = None

    def may_replace(self, path: str | Path) -> bool:
        return self.overwrite or Path(path) in self.owned


def _file_mode(mode: int | None) -> int:
    if mode is None or mode & 0o777 == 0:
        return 0o644
    # No setuid/setgid/sticky, no group/other write; the owner can read/write.
    result = (mode & 0o755) | 0o600
    if not result & 0o100:
        result &= ~0o111
    return result


def _dir_mode(mode: int | None) -> int:
    if mode is None or mode & 0o777 == 0:
        return 0o755
    return (mode & 0o755) | 0o700


_MTIME_MAX = 253402300799  # 9999-12-31: beyond that utime() may overflow


def _mtime_ns(mtime: float | None) -> int | None:
    if mtime is None or not math.isfinite(mtime):
        return None
    return int(min(max(mtime, 0), _MTIME_MAX) * 1_000_000_000)


class StagingWriter:
    """Creates checked entries under the staging root, never following links."""

    def __init__(self, root: str, checker: EntryChecker, dest_dir: Path) -> None:
        self.root = root
        self.checker = checker
        self.dest_dir = dest_dir
        self._dirs: set[tuple[str, ...]] = {()}
        self.files: list[tuple[str, ...]] = []
        # size and sha256 of each regular file, computed while writing it
        self.digests: dict[tuple[str, ...], tuple[int, str]] = {}
        self.dir_times: list[tuple[tuple[str, ...], int]] = []

    def _path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts)

    def _dest_error(self, parts: tuple[str, ...], exc: OSError) -> DestinationError:
        rel = "/".join(parts)
        return DestinationError(
            f"{self.checker.archive}: cannot write {rel} under {self.dest_dir}: "
            f"{exc.strerror or exc}"
        )

    def _collision(self, raw: str) -> ArchiveError:
        return self.checker.refuse(
            raw, "collides with another entry on this filesystem (case-insensitive?)"
        )

    def _mkdir(self, parts: tuple[str, ...], mode: int, raw: str) -> None:
        path = self._path(parts)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except OSError as exc:
                raise self._dest_error(parts, exc) from exc
            if not is_dir:
                raise self._collision(raw) from None
        except OSError as exc:
            raise self._dest_error(parts, exc) from exc
        self._dirs.add(parts)

    def _parents(self, parts: tuple[str, ...], raw: str) -> None:
        for i in range(1, len(parts)):
            if parts[:i] not in self._dirs:
                self._mkdir(parts[:i], 0o755, raw)

    def make_dir(
        self, parts: tuple[str, ...], mode: int | None, mtime: float | None, raw: str
    ) -> None:
        self._parents(parts, raw)
        if parts not in self._dirs:
            self._mkdir(parts, _dir_mode(mode), raw)
        ns = _mtime_ns(mtime)
        if ns is not None:
            self.dir_times.append((parts, ns))

    def write_file(
        self,
        parts: tuple[str, ...],
        chunks: Iterator[bytes],
        mode: int | None,
        mtime: float | None,
        raw: str,
    ) -> None:
        self._parents(parts, raw)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._path(parts), flags, _file_mode(mode))
        except FileExistsError:
            raise self._collision(raw) from None
        except OSError as exc:
            raise self._dest_error(parts, exc) from exc
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:  # the iterator raises ArchiveError for damaged data
                self.checker.count_written(len(chunk), raw)
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    try:
                        done = os.write(fd, view)
                    except OSError as exc:
                        raise self._dest_error(parts, exc) from exc
                    view = view[done:]
            ns = _mtime_ns(mtime)
            if ns is not None:
                try:
                    os.utime(fd, ns=(ns, ns))
                except OSError as exc:
                    raise self._dest_error(parts, exc) from exc
        finally:
            os.close(fd)
        self.files.append(parts)
        self.digests[parts] = (size, digest.hexdigest())

    def make_symlink(
        self, parts: tuple[str, ...], target: str, mtime: float | None, raw: str
    ) -> None:
        self._parents(parts, raw)
        path = self._path(parts)
        try:
            os.symlink(target, path)
        except FileExistsError:
            raise self._collision(raw) from None
        except OSError as exc:
            raise self._dest_error(parts, exc) from exc
        ns = _mtime_ns(mtime)
        if ns is not None and os.utime in os.supports_follow_symlinks:
            try:
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            except OSError as exc:
                raise self._dest_error(parts, exc) from exc

    def make_hardlink(self, parts: tuple[str, ...], origin: tuple[str, ...], raw: str) -> None:
        self._parents(parts, raw)
        source = self._path(origin)
        try:
            os.link(source, self._path(parts), follow_symlinks=False)
        except FileExistsError:
            raise self._collision(raw) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise self._dest_error(parts, exc) from exc
            # The filesystem has no hard links (FAT, some network shares): copy,
            # counting the bytes like any other file.
            try:
                info = os.stat(source)
                handle = open(source, "rb")  # noqa: SIM115 - closed below
            except OSError as exc2:
                raise self._dest_error(origin, exc2) from exc2
            with handle:
                self.write_file(
                    parts, _local_chunks(handle, self, origin), info.st_mode, info.st_mtime, raw
                )
            return
        self.files.append(parts)
        self.digests[parts] = self.digests[origin]


def _local_chunks(
    handle: BinaryIO, writer: StagingWriter, parts: tuple[str, ...]
) -> Iterator[bytes]:
    while True:
        try:
            chunk = handle.read(READ_CHUNK)
        except OSError as exc:
            raise writer._dest_error(parts, exc) from exc
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------
# Destination: conflict check and moving into place
# --------------------------------------------------------------------------


class DestinationCheck:
    """Compares the entries with what is already in the destination (read only)."""

    def __init__(
        self, dest_dir: Path, archive: str, *, placement: Placement, fail_fast: bool
    ) -> None:
        self.dest_dir = dest_dir
        self.archive = archive
        self.placement = placement
        self.fail_fast = fail_fast
        self.is_dir: dict[tuple[str, ...], bool] = {(): True}  # exists in dest as a real dir
        self.conflicts: list[str] = []

    def add(self, entry: Entry) -> None:
        parts = entry.parts
        if not self.is_dir.get(parts[:-1], False):
            self.is_dir[parts] = False  # parent is new (or replaced): nothing below it exists
            return
        path = os.path.join(self.dest_dir, *parts)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            self.is_dir[parts] = False
            return
        except OSError as exc:
            raise DestinationError(
                f"{self.archive}: cannot inspect {path}: {exc.strerror or exc}"
            ) from exc
        if stat.S_ISDIR(mode):
            if entry.kind is EntryKind.DIR:
                self.is_dir[parts] = True
                return
            raise DestinationError(
                f"{self.archive}: cannot extract {entry.kind.value} {'/'.join(parts)}: "
                f"{path} is an existing directory"
            )
        self.is_dir[parts] = False
        if Path(path) in self.placement.owned:
            return  # dataferry's own result from an earlier run: replaced without asking
        self.conflicts.append("/".join(parts))
        if self.fail_fast:
            self.finish()

    def finish(self) -> None:
        if self.conflicts and not self.placement.overwrite:
            shown = ", ".join(self.conflicts[:5])
            more = f" and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else ""
            raise OverwriteConflictError(
                f"{self.archive}: would replace {len(self.conflicts)} existing file(s) in "
                f"{self.dest_dir}: {shown}{more} (overwrite is off)"
            )


def _move(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # dst's parent is a mount point inside the destination: copy next to
        # dst first, then rename, so dst still appears in one step.
        tmp = os.path.join(os.path.dirname(dst), f"{_STAGING_PREFIX}{os.urandom(6).hex()}")
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        os.replace(tmp, dst)


def _merge(staging: str, dest_dir: Path, archive: str, *, placement: Placement) -> None:
    """Move the staged tree into dest_dir; whole new subtrees move in one rename."""
    stack: list[tuple[str, str]] = [(staging, str(dest_dir))]
    while stack:
        src_dir, dst_dir = stack.pop()
        try:
            with os.scandir(src_dir) as scan:
                items = [
                    (item.name, item.path, item.is_dir(follow_symlinks=False)) for item in scan
                ]
            for name, src, src_is_dir in items:
                dst = os.path.join(dst_dir, name)
                try:
                    dst_mode: int | None = os.lstat(dst).st_mode
                except FileNotFoundError:
                    dst_mode = None
                if dst_mode is None:
                    _move(src, dst)
                elif stat.S_ISDIR(dst_mode):
                    if not src_is_dir:
                        raise DestinationError(
                            f"{archive}: {dst} became a directory during extraction"
                        )
                    stack.append((src, dst))
                elif not placement.may_replace(dst):
                    raise OverwriteConflictError(
                        f"{archive}: {dst} appeared during extraction (overwrite is off)"
                    )
                else:
                    if src_is_dir:
                        os.unlink(dst)  # rename() cannot put a directory over a file
                    _move(src, dst)
        except OSError as exc:
            raise DestinationError(
                f"{archive}: cannot move extracted files into {dest_dir}: {exc.strerror or exc}"
            ) from exc


class StagingDirectory:
    """A private directory inside dest_dir, always removed on exit.

    Creates dest_dir (and missing parents) if needed; on failure removes the
    directories it created, so a failed run leaves no trace.
    """

    def __init__(self, dest_dir: Path, archive: str) -> None:
        self.dest_dir = dest_dir
        self.archive = archive
        self._created: list[Path] = []
        self.path = ""

    def __enter__(self) -> str:
        missing: list[Path] = []
        probe = self.dest_dir
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        try:
            for directory in reversed(missing):
                directory.mkdir()
                self._created.append(directory)
            self.path = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.dest_dir)
        except OSError as exc:
            self._remove_created()
            raise DestinationError(
                f"{self.archive}: cannot use destination {self.dest_dir}: {exc.strerror or exc}"
            ) from exc
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            shutil.rmtree(self.path)
        except OSError as error:
            raise DestinationError(
                f"{self.archive}: cannot remove staging directory {self.path}: "
                f"{error.strerror or error}"
            ) from error
        if exc_type is not None:
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return  # someone else put something there: not ours to remove
                raise


def install_staged(
    staging: str,
    dest_dir: Path,
    checker: EntryChecker,
    writer: StagingWriter,
    *,
    placement: Placement,
) -> list[Path]:
    """Move the staged tree into dest_dir; returns the final paths of the regular files."""
    check = DestinationCheck(dest_dir, checker.archive, placement=placement, fail_fast=False)
    for entry in checker.entries.values():
        check.add(entry)
    check.finish()
    if placement.before_install is not None:
        placement.before_install(_staged_files(staging, writer))
    _merge(staging, dest_dir, checker.archive, placement=placement)
    for parts, ns in writer.dir_times:
        if not check.is_dir.get(parts, False):  # only directories this run created
            try:
                os.utime(os.path.join(dest_dir, *parts), ns=(ns, ns))
            except OSError as exc:
                raise writer._dest_error(parts, exc) from exc
    return [Path(dest_dir, *parts) for parts in writer.files]


def _staged_files(staging: str, writer: StagingWriter) -> list[StagedFile]:
    staged = []
    for parts in writer.files:
        size, sha256 = writer.digests[parts]
        mtime = int(os.lstat(os.path.join(staging, *parts)).st_mtime)
        staged.append(StagedFile("/".join(parts), size, mtime, sha256))
    return staged


def precheck_destination(dest_dir: Path, checker: EntryChecker, *, placement: Placement) -> None:
    """Compare every checked entry with dest_dir before anything is written."""
    check = DestinationCheck(dest_dir, checker.archive, placement=placement, fail_fast=False)
    for entry in checker.entries.values():
        check.add(entry)
    check.finish()


class ExtractionTarget(abc.ABC):
    """Where checked entries go when the destination is not a local folder.

    The default (None in Placement) is a StagingDirectory inside dest_dir, a
    StagingWriter and install_staged. A target supplies all three: the same
    checks run, the same writer calls arrive, and nothing may be visible
    before install(); leaving the staging context with an error must undo
    everything (sinks/s3/extract.py: multipart uploads, completed in install).
    """

    @abc.abstractmethod
    def staging(self, dest_dir: Path, archive: str) -> AbstractContextManager[str]:
        """The staging area, undone on an error."""

    @abc.abstractmethod
    def writer(self, staging: str, checker: EntryChecker, dest_dir: Path) -> StagingWriter:
        """Receives the checked entries."""

    @abc.abstractmethod
    def install(
        self,
        staging: str,
        dest_dir: Path,
        checker: EntryChecker,
        writer: StagingWriter,
        *,
        placement: Placement,
    ) -> list[Path]:
        """Make everything visible (placement.before_install first); the regular files."""


def open_staging(dest_dir: Path, archive: str, placement: Placement) -> AbstractContextManager[str]:
    if placement.target is not None:
        return placement.target.staging(dest_dir, archive)
    return StagingDirectory(dest_dir, archive)


def new_writer(
    staging: str, checker: EntryChecker, dest_dir: Path, placement: Placement
) -> StagingWriter:
    if placement.target is not None:
        return placement.target.writer(staging, checker, dest_dir)
    return StagingWriter(staging, checker, dest_dir)


def install(
    staging: str,
    dest_dir: Path,
    checker: EntryChecker,
    writer: StagingWriter,
    *,
    placement: Placement,
) -> list[Path]:
    if placement.target is not None:
        return placement.target.install(staging, dest_dir, checker, writer, placement=placement)
    return install_staged(staging, dest_dir, checker, writer, placement=placement)
