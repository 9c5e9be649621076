"""Tar (plain, gz, bz2, xz): one sequential pass per use, members checked as read.

``scan_tar_file`` is the read-only first pass over a file on disk (every
header and the compressed stream's CRC); ``extract_tar`` / ``extract_tar_stream``
check each member and write it into the staging directory.  Plain tarfile
stops quietly at a damaged header after the first member: ``_StrictTarInfo``
turns that into an error, and the end-of-archive marker must be followed by
zero padding only.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO, Self, cast

from .checks import EntryChecker, EntryKind, ExtractLimits
from .kinds import ArchiveKind, open_tar_stream
from .reading import READ_CHUNK, READ_ERRORS, error_detail, open_archive
from .staging import (
    DestinationCheck,
    ExtractionTarget,
    Placement,
    StagedFile,
    StagingWriter,
    install,
    new_writer,
    open_staging,
)

# Not in typeshed, but in tarfile since Python 2.  Kept: the public HeaderError also
# covers the end-of-archive block, and no documented name tells these three apart from it.
_TAR_EMPTY_HEADER: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TAR_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_TAR_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]


class _CountingReader:
    """Passes reads through, counting compressed bytes (for the ratio cap)."""

    name = ""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self.count += len(data)
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The caller owns the underlying file."""


# PEP 706's filter arrived in 3.11.4; Debian 12's Python is 3.11.2. Our own
# checks (checks.py) do not depend on it, so older interpreters still extract safely.
_DATA_FILTER: Callable[[tarfile.TarInfo, str], object] | None = getattr(
    tarfile, "data_filter", None
)
_FILTER_ERRORS: type[Exception] | tuple[()] = getattr(tarfile, "FilterError", ())


class _TarStructureError(tarfile.ReadError):
    """A header tarfile would silently take as the end of the archive."""


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that reports a truncated or garbled header instead of ending early.

    Plain tarfile stops quietly at a bad or missing header after the first
    member, which would turn a damaged archive into a silently partial one.
    (``TarFile(tarinfo=...)`` and ``TarInfo.fromtarfile`` are documented.)
    """

    @classmethod
    def fromtarfile(cls, tarfile: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile)
        except (_TAR_EMPTY_HEADER, _TAR_TRUNCATED_HEADER) as exc:
            raise _TarStructureError(
                "archive ends without an end-of-archive marker (truncated?)"
            ) from exc
        except _TAR_INVALID_HEADER as exc:
            raise _TarStructureError(f"invalid tar header ({exc})") from exc


def _tar_chunks(handle: IO[bytes], size: int, checker: EntryChecker, raw: str) -> Iterator[bytes]:
    left = size
    while left > 0:
        try:
            chunk = handle.read(min(READ_CHUNK, left))
        except READ_ERRORS as exc:
            raise checker.corrupt(error_detail(exc), raw) from exc
        if not chunk:
            raise checker.corrupt("unexpected end of data", raw)
        left -= len(chunk)
        yield chunk


def _tar_kind(member: tarfile.TarInfo, checker: EntryChecker) -> EntryKind:
    if member.isreg() or member.islnk():
        return EntryKind.FILE
    if member.isdir():
        return EntryKind.DIR
    if member.issym():
        return EntryKind.SYMLINK
    if member.ischr() or member.isblk():
        raise checker.refuse(member.name, "device files are not allowed")
    if member.isfifo():
        raise checker.refuse(member.name, "FIFOs are not allowed")
    raise checker.refuse(member.name, f"unsupported tar entry type {member.type!r}")


def _walk_tar(stream: BinaryIO, checker: EntryChecker, writer: StagingWriter | None) -> None:
    """Check (and with a writer, extract) every member of a sequential tar stream."""
    last: str | None = None
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed by the with below
            fileobj=stream, mode="r|", bufsize=READ_CHUNK, tarinfo=_StrictTarInfo
        )
    except READ_ERRORS as exc:
        raise checker.corrupt(error_detail(exc)) from exc
    with archive:
        while True:
            try:
                member = archive.next()
            except READ_ERRORS as exc:
                raise checker.corrupt(error_detail(exc), last, after=True) from exc
            if member is None:
                break
            # tarfile keeps every TarInfo; a million-member stream does not need them
            # (TarFile.members is undocumented, but nothing public lets them go).
            archive.members.clear()  # type: ignore[attr-defined]
            raw = last = member.name
            kind = _tar_kind(member, checker)
            checked = checker.check(
                raw,
                kind,
                size=member.size if member.isreg() else 0,
                symlink=member.linkname if member.issym() else None,
                hardlink=member.linkname if member.islnk() else None,
            )
            if checked is None or writer is None:
                continue
            if _DATA_FILTER is not None:
                try:
                    # PEP 706 as a floor under our rules, resolved in the real staging
                    # tree.  Only when writing: it costs a realpath() per member.
                    _DATA_FILTER(member, writer.root)
                except _FILTER_ERRORS as exc:
                    raise checker.refuse(raw, f"refused by tarfile's data filter: {exc}") from exc
            parts = checked.entry.parts
            if kind is EntryKind.DIR:
                writer.make_dir(parts, member.mode, member.mtime, raw)
            elif kind is EntryKind.SYMLINK:
                assert checked.link_target is not None
                writer.make_symlink(parts, checked.link_target, member.mtime, raw)
            elif checked.hardlink_to is not None:
                writer.make_hardlink(parts, checked.hardlink_to, raw)
            else:
                try:
                    data = archive.extractfile(member)
                except READ_ERRORS as exc:
                    raise checker.corrupt(error_detail(exc), raw) from exc
                assert data is not None  # regular member
                writer.write_file(
                    parts,
                    _tar_chunks(data, member.size, checker, raw),
                    member.mode,
                    member.mtime,
                    raw,
                )
        # Read to the end: checks the compressed stream's CRC and length, and
        # that only zero padding follows the end marker (a garbled header
        # would otherwise look like the end).
        padding = archive.fileobj
        while True:
            try:
                rest = padding.read(READ_CHUNK)
            except READ_ERRORS as exc:
                raise checker.corrupt(error_detail(exc)) from exc
            if not rest:
                break
            if rest.count(0) != len(rest):
                raise checker.corrupt("unexpected data after the end-of-archive marker")
            checker.count_padding(len(rest))


def scan_tar_file(archive: Path, kind: ArchiveKind, limits: ExtractLimits) -> EntryChecker:
    """Read-only first pass: every header checked, the whole stream verified."""
    handle, size = open_archive(archive)
    with handle:
        checker = EntryChecker(archive.name, limits, lambda: size, declared_ratio_base=size)
        try:
            stream = open_tar_stream(handle, kind)
        except READ_ERRORS as exc:
            raise checker.corrupt(error_detail(exc)) from exc
        _walk_tar(stream, checker, None)
    return checker


def extract_tar(
    fileobj: BinaryIO,
    dest_dir: Path,
    *,
    name: str,
    compression: ArchiveKind,
    placement: Placement,
    limits: ExtractLimits,
    early_conflict_check: bool,
) -> list[Path]:
    """Check and write every member in one pass through the staging directory.

    early_conflict_check: also compare each entry with the destination as
    soon as it is read (a stream: stop before the rest is downloaded).
    """
    if compression is ArchiveKind.ZIP:
        raise ValueError("zip archives need random access: use extract_archive")
    counter = _CountingReader(fileobj)
    checker = EntryChecker(name, limits, lambda: counter.count)
    if early_conflict_check:
        # Stop at the first conflict rather than after a long download.
        early = DestinationCheck(dest_dir, name, placement=placement, fail_fast=True)
        checker.on_new_entry = early.add
    with open_staging(dest_dir, name, placement) as staging:
        writer = new_writer(staging, checker, dest_dir, placement)
        try:
            stream = open_tar_stream(cast(BinaryIO, counter), compression, threaded=True)
        except READ_ERRORS as exc:
            raise checker.corrupt(error_detail(exc)) from exc
        try:
            _walk_tar(stream, checker, writer)
        finally:
            stream.close()  # stops a threaded decompressor's worker
        return install(staging, dest_dir, checker, writer, placement=placement)


def extract_tar_stream(
    fileobj: BinaryIO,
    dest_dir: Path,
    *,
    name: str,
    compression: ArchiveKind,
    overwrite: bool,
    limits: ExtractLimits,
    owned: frozenset[Path] = frozenset(),
    before_install: Callable[[list[StagedFile]], None] | None = None,
    target: ExtractionTarget | None = None,
) -> list[Path]:
    """Extract a tar read sequentially from ``fileobj`` (only ``read`` is used).

    ``compression`` is one of the TAR kinds; ``name`` is used in messages.
    Each member is checked before it is written; everything goes to a staging
    directory first, so a refusal or a damaged stream leaves dest_dir as it
    was.  Returns the final paths of the regular files extracted.
    """
    return extract_tar(
        fileobj,
        dest_dir,
        name=name,
        compression=compression,
        placement=Placement(overwrite, owned, before_install, target),
        limits=limits,
        early_conflict_check=True,
    )
