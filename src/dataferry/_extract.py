"""Safe, fast extraction of zip and tar (plain, gz, bz2, xz) archives.

Safety model
------------
* Everything is written into a private staging directory *inside* the
  destination (``dest/.dataferry-extract-<random>``) and only moved into place
  (``os.replace``, merging into existing directories) once the whole archive
  has been read, checked and verified.  A refused, corrupt or truncated
  archive therefore leaves the destination as it was: nothing appears under a
  final name, and the staging directory is always removed.  (If the
  destination itself had to be created, it is removed again on failure.)
* For files on disk every entry is checked before anything is written: zips
  from their central directory plus every local header and symlink target,
  tars by a first read-only pass over all headers that also verifies the
  compressed stream's CRC (about 0.1 s per 100 MB with ISA-L).  The stream
  variants cannot look ahead that far: ``extract_tar_stream`` checks each
  member before writing it; ``extract_zip_stream`` checks every name, type,
  size and destination conflict from the central directory up front, then
  each local header and symlink target as the archive is read front to back.
  Both rely on the staging directory for all-or-nothing.
* Sizes in headers are not trusted: bytes are counted as they are written and
  the run stops as soon as a limit (``ExtractLimits``) is crossed.  Zip
  members are inflated here with bounded output per call, so a bomb never
  sits in memory either.
* Speed: gzip streams are inflated by ISA-L (``igzip``), zip deflate members
  by ``isal_zlib``: about 3x (tar.gz) and 2.3x (zip) faster end to end than
  the same code on zlib.

Refused (``ArchiveError``, naming the archive and the entry)
-----------------------------------------------------------
* absolute names: leading ``/`` or ``\\``, UNC, a Windows drive (a first
  component starting ``C:``, so a top-level ``x:y.csv`` is refused too);
* any ``..`` component, even one that would stay inside (``a/../b``);
* control characters (incl. NUL, newline) in names; names that are not valid
  Unicode; a component over 255 bytes or a path over 4095 bytes;
* symlinks whose target is absolute, escapes the destination, or has ``..``
  after a directory name (``a/../b``): a target may only climb first and then
  descend, so it can be resolved by counting, without trusting what is on
  disk.  Zip entries whose Unix mode says ``S_IFLNK`` are symlinks too;
* hard links (tar) whose target is not an earlier regular file of the same
  archive;
* device files, FIFOs, sockets and any other unsupported entry type;
  encrypted zip entries; unsupported zip compression methods;
* collisions: two entries that map to the same path after normalisation
  (``a/b``, ``a//b``, ``./a/b``, ``a\\b``), a file and a directory of the same
  name, or an entry below a file or symlink (so nothing is ever written
  through a link);
* more than ``max_members`` entries, more than ``max_total_bytes`` of data, an
  uncompressed/compressed ratio above ``max_ratio`` (only enforced once
  ``ratio_grace_bytes`` have been produced, so tiny archives of very
  compressible text are not refused), overlapping zip entries;
* and, as a floor under all of this, anything Python's tarfile ``data``
  filter (PEP 706) refuses, applied to each member as it is written.

Corrupt or truncated (``ArchiveError``; the archive file is left in place)
----------------------------------------------------------------------------
Bad CRC (zip entries, gzip/bzip2/xz streams), a truncated stream, a garbled
tar header, a tar without its end-of-archive marker (plain tarfile would
stop quietly and extract a prefix), anything but zero padding after that
marker, a zip entry inflating to more or fewer bytes than its header says,
zip local headers that disagree with the central directory.

Normalisation choices
---------------------
* ``\\`` is treated as a path separator in every format (old Windows zip
  tools write it), so ``..\\x`` is caught and ``a\\b`` collides with ``a/b``.
* Empty and ``.`` components are dropped; the archive root (``./``) is
  ignored.
* Unicode: names are written exactly as stored (no re-normalisation, so
  names match what the data provider documents), but collisions are detected
  on the NFC form, so two names that look identical are refused rather than
  silently producing two look-alike files.  All spellings of one directory are
  written under the first spelling seen.
* Case is preserved and case-only differences are *not* collisions: the
  destination is a case-sensitive Linux filesystem.  On a case-insensitive or
  normalising filesystem the collision is still caught, physically: every
  file is created with ``O_EXCL`` in the empty staging directory, so a second
  name mapping to the same file is refused instead of overwriting the first.
* Zip names without the UTF-8 flag: the Info-ZIP Unicode Path field is used
  if present and valid, else the bytes are decoded as UTF-8 if they are valid
  UTF-8 (what Linux and macOS tools write), else as CP437 (the zip standard).

Destination rules
-----------------
* Existing directories are merged into, never replaced.  Anything else at a
  path the archive writes (file, symlink, also a symlink where the archive has
  a directory) would be replaced: with ``overwrite=False`` that is an
  ``OverwriteConflictError`` raised before anything is moved; with
  ``overwrite=True`` the old entry itself is replaced (a symlink is replaced,
  never written through).  An existing directory where the archive has a file
  is a ``DestinationError`` in both modes.
* Modes: setuid/setgid/sticky and group/other write bits are dropped, the
  owner can always read and write, execute bits are kept only if the owner
  has one; the process umask applies.  Files, symlinks and directories get the
  archive's mtime (directories only when this run created them).
"""

from __future__ import annotations

import bz2
import enum
import errno
import io
import itertools
import lzma
import math
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, BinaryIO, Self, cast

from isal import igzip, igzip_threaded, isal_zlib

from dataferry._exceptions import ArchiveError, DestinationError, OverwriteConflictError

__all__ = [
    "ArchiveKind",
    "ExtractLimits",
    "archive_member_paths",
    "detect_archive_kind",
    "detect_archive_kind_of",
    "extract_archive",
    "extract_tar_stream",
    "extract_zip_stream",
    "normalize_member_path",
]

_CHUNK = 256 << 10  # bytes read per call (smaller chunks stay in CPU cache: measured faster)
_OUT_CHUNK = 1 << 20  # most decompressed bytes per call: bounds memory on bombs, stays in cache
_MAX_COMPONENT_BYTES = 255
_MAX_PATH_BYTES = 4095
_MAX_PADDING = 16 << 20  # zero bytes accepted after a tar's end-of-archive marker
_STAGING_PREFIX = ".dataferry-extract-"
_SHOWN_NAME_MAX = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")

# Not in typeshed, but part of tarfile since Python 2.
_TAR_EMPTY_HEADER: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TAR_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_TAR_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # the stub types it as an instance

# What a damaged archive can raise while being read and decompressed.  Only
# ever caught around read calls, so a write failure is never mistaken for it.
_READ_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes gzip.BadGzipFile (bad magic, CRC mismatch)
    EOFError,  # truncated compressed stream
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    _ISAL_ERROR,
    lzma.LZMAError,
    struct.error,
    ValueError,  # malformed numeric / text fields in headers
    NotImplementedError,  # zipfile: "zip file version 24.2" and the like
)


class ArchiveKind(enum.Enum):
    """Archive formats dataferry extracts."""

    ZIP = "zip"
    TAR = "tar"
    TAR_GZ = "tar.gz"
    TAR_BZ2 = "tar.bz2"
    TAR_XZ = "tar.xz"


@dataclass(frozen=True)
class ExtractLimits:
    """Caps that stop hostile archives (decompression bombs, inode floods).

    ``ratio_grace_bytes``: the ratio cap only applies once this much has been
    produced, so a tiny archive of very repetitive text is not refused.
    """

    max_total_bytes: int = 64 * 2**30
    max_ratio: float = 1000.0
    max_members: int = 1_000_000
    ratio_grace_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_total_bytes < 0 or self.max_members < 0 or self.ratio_grace_bytes < 0:
            raise ValueError("extract limits must not be negative")
        if not self.max_ratio > 0:
            raise ValueError("max_ratio must be positive")


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


class _Refused(Exception):
    """A name or link target that may not be extracted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _show(name: str) -> str:
    """Make an entry name safe for a one-line message (escape controls, cap length)."""
    out: list[str] = []
    for ch in name[:_SHOWN_NAME_MAX]:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    if len(name) > _SHOWN_NAME_MAX:
        out.append("...")
    return "".join(out)


def _component_bytes(part: str) -> int:
    try:
        size = len(os.fsencode(part))
    except UnicodeEncodeError:
        # Lone surrogates other than the surrogateescape range: no file name.
        raise _Refused("name is not valid Unicode") from None
    if size > _MAX_COMPONENT_BYTES:
        raise _Refused(f"name component longer than {_MAX_COMPONENT_BYTES} bytes")
    return size


def _split_name(name: str) -> tuple[str, ...]:
    """Split an archive name into safe components; () is the archive root."""
    if _CONTROL.search(name):
        raise _Refused("control character in name")
    text = name.replace("\\", "/")
    if text.startswith("/"):
        raise _Refused("absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if parts and _DRIVE.match(parts[0]):
        raise _Refused("absolute path (Windows drive)")
    if ".." in parts:
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                raise _Refused("path escapes the destination")
        raise _Refused("'..' component in path")
    total = 0
    for part in parts:
        total += _component_bytes(part) + 1
    if total > _MAX_PATH_BYTES:
        raise _Refused(f"path longer than {_MAX_PATH_BYTES} bytes")
    return tuple(parts)


def _refusal(archive: str, entry: str, reason: str) -> ArchiveError:
    return ArchiveError(f'{archive}: refused entry "{_show(entry)}": {reason}')


def normalize_member_path(name: str, *, archive_name: str = "archive") -> PurePosixPath:
    """Return the safe relative path an archive entry name maps to.

    Raises ArchiveError (naming ``archive_name`` and the entry) for every name
    that is absolute, climbs out, is empty, or cannot be a file name.
    """
    try:
        parts = _split_name(name)
    except _Refused as refused:
        raise _refusal(archive_name, name, refused.reason) from None
    if not parts:
        raise _refusal(archive_name, name, "empty name")
    return PurePosixPath(*parts)


def _link_target(link_parts: tuple[str, ...], target: str) -> str:
    """Check a symlink target; return it in canonical form (``../../a/b``)."""
    if not target:
        raise _Refused("empty symlink target")
    if _CONTROL.search(target):
        raise _Refused("control character in symlink target")
    text = target.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or (parts and _DRIVE.match(parts[0])):
        raise _Refused(f'absolute symlink target "{_show(target)}"')
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    down = parts[ups:]
    if ups > len(link_parts) - 1:
        raise _Refused(f'symlink target "{_show(target)}" escapes the destination')
    if ".." in down:
        # Only climb-then-descend targets are accepted: "a/../b" would depend
        # on what "a" is on disk, which this check must not trust.
        raise _Refused(f'symlink target "{_show(target)}" has ".." after a directory name')
    total = 0
    for part in down:
        total += _component_bytes(part) + 1
    if total + 3 * ups > _MAX_PATH_BYTES:
        raise _Refused("symlink target too long")
    return "/".join([".."] * ups + down) or "."


def _nfc(parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(unicodedata.normalize("NFC", p) for p in parts)


# --------------------------------------------------------------------------
# Checking entries (no I/O)
# --------------------------------------------------------------------------


class _Kind(enum.Enum):
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(slots=True)
class _Entry:
    parts: tuple[str, ...]  # as written: first spelling seen for each directory
    kind: _Kind
    raw: str | None  # name in the archive; None for an implied parent directory


@dataclass(slots=True)
class _Checked:
    entry: _Entry
    link_target: str | None = None  # canonical symlink target
    hardlink_to: tuple[str, ...] | None = None  # parts of the earlier file


class _Checker:
    """Applies the refusal rules and limits to a sequence of entries."""

    def __init__(
        self,
        archive: str,
        limits: ExtractLimits,
        compressed_bytes: Callable[[], int],
        *,
        declared_ratio_base: int | None = None,
    ) -> None:
        self.archive = archive
        self.limits = limits
        self._compressed_bytes = compressed_bytes
        self._declared_ratio_base = declared_ratio_base
        self.entries: dict[tuple[str, ...], _Entry] = {}  # key: NFC components
        self.on_new_entry: Callable[[_Entry], None] | None = None
        self.members = 0
        self.declared = 0
        self.written = 0
        self.padding = 0

    def refuse(self, raw: str, reason: str) -> ArchiveError:
        return _refusal(self.archive, raw, reason)

    def corrupt(self, detail: str, raw: str | None = None, *, after: bool = False) -> ArchiveError:
        where = ""
        if raw is not None:
            where = f' {"after" if after else "at"} entry "{_show(raw)}"'
        return ArchiveError(f"{self.archive}: corrupt or truncated archive{where}: {detail}")

    def _ratio_exceeded(self, produced: int, compressed: int) -> bool:
        return produced > self.limits.ratio_grace_bytes and produced > self.limits.max_ratio * max(
            compressed, 1
        )

    def _add(self, entry: _Entry) -> None:
        self.entries[_nfc(entry.parts)] = entry
        if self.on_new_entry is not None:
            self.on_new_entry(entry)

    def check(
        self,
        raw: str,
        kind: _Kind,
        *,
        size: int = 0,
        symlink: str | None = None,
        hardlink: str | None = None,
    ) -> _Checked | None:
        """Check one entry before it is written; None means "the archive root"."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(raw, f"archive has more than {self.limits.max_members} entries")
        try:
            parts = _split_name(raw)
            if not parts:
                if kind is _Kind.DIR and hardlink is None:
                    return None
                raise _Refused("empty name")
            target = _link_target(parts, symlink) if symlink is not None else None
        except _Refused as refused:
            raise self.refuse(raw, refused.reason) from None
        try:
            link_parts = _split_name(hardlink) if hardlink is not None else None
        except _Refused as refused:
            raise self.refuse(
                raw, f'hard link target "{_show(hardlink or "")}": {refused.reason}'
            ) from None

        key = _nfc(parts)
        written: tuple[str, ...] = ()
        for i in range(1, len(parts)):
            prev = self.entries.get(key[:i])
            if prev is None:
                written = (*written, parts[i - 1])
                self._add(_Entry(written, _Kind.DIR, None))
            elif prev.kind is not _Kind.DIR:
                raise self.refuse(raw, f'parent "{_show(prev.raw or "")}" is a {prev.kind.value}')
            else:
                written = prev.parts
        prev = self.entries.get(key)
        if prev is not None:
            if prev.kind is _Kind.DIR and kind is _Kind.DIR:
                return _Checked(prev)  # the same directory listed twice is harmless
            other = prev.raw if prev.raw is not None else "/".join(prev.parts)
            raise self.refuse(raw, f'collides with "{_show(other)}" after normalisation')

        hardlink_to: tuple[str, ...] | None = None
        if link_parts is not None:
            origin = self.entries.get(_nfc(link_parts)) if link_parts else None
            if origin is None or origin.kind is not _Kind.FILE:
                raise self.refuse(
                    raw,
                    f'hard link target "{_show(hardlink or "")}" is not an earlier '
                    "regular file of the archive",
                )
            hardlink_to = origin.parts

        self.declared += size
        if self.declared > self.limits.max_total_bytes:
            raise self.refuse(
                raw,
                f"total uncompressed size exceeds the limit of {self.limits.max_total_bytes} bytes",
            )
        if self._declared_ratio_base is not None and self._ratio_exceeded(
            self.declared, self._declared_ratio_base
        ):
            raise self.refuse(raw, self._ratio_message())

        entry = _Entry((*written, parts[-1]), kind, raw)
        self._add(entry)
        return _Checked(entry, target, hardlink_to)

    def _ratio_message(self) -> str:
        return f"compression ratio exceeds {self.limits.max_ratio:g}:1 (decompression bomb?)"

    def count_written(self, size: int, raw: str) -> None:
        """Count bytes about to be written; refuse once a limit is crossed."""
        self.written += size
        if self.written > self.limits.max_total_bytes:
            raise self.refuse(
                raw,
                f"total uncompressed size exceeds the limit of {self.limits.max_total_bytes} bytes",
            )
        if self._ratio_exceeded(self.written, self._compressed_bytes()):
            raise self.refuse(raw, self._ratio_message())

    def count_padding(self, size: int) -> None:
        self.padding += size
        if self.padding > _MAX_PADDING:
            raise self.corrupt("too much data after the end-of-archive marker")


# --------------------------------------------------------------------------
# Writing into the staging directory
# --------------------------------------------------------------------------


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


class _Writer:
    """Creates checked entries under the staging root, never following links."""

    def __init__(self, root: str, checker: _Checker, dest_dir: Path) -> None:
        self.root = root
        self.checker = checker
        self.dest_dir = dest_dir
        self._dirs: set[tuple[str, ...]] = {()}
        self.files: list[tuple[str, ...]] = []
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
        try:
            for chunk in chunks:  # the iterator raises ArchiveError for damaged data
                self.checker.count_written(len(chunk), raw)
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


def _local_chunks(handle: BinaryIO, writer: _Writer, parts: tuple[str, ...]) -> Iterator[bytes]:
    while True:
        try:
            chunk = handle.read(_CHUNK)
        except OSError as exc:
            raise writer._dest_error(parts, exc) from exc
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------
# Destination: conflict check and moving into place
# --------------------------------------------------------------------------


class _DestinationCheck:
    """Compares the entries with what is already in the destination (read only)."""

    def __init__(self, dest_dir: Path, archive: str, *, overwrite: bool, fail_fast: bool) -> None:
        self.dest_dir = dest_dir
        self.archive = archive
        self.overwrite = overwrite
        self.fail_fast = fail_fast
        self.is_dir: dict[tuple[str, ...], bool] = {(): True}  # exists in dest as a real dir
        self.conflicts: list[str] = []

    def add(self, entry: _Entry) -> None:
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
            if entry.kind is _Kind.DIR:
                self.is_dir[parts] = True
                return
            raise DestinationError(
                f"{self.archive}: cannot extract {entry.kind.value} {'/'.join(parts)}: "
                f"{path} is an existing directory"
            )
        self.is_dir[parts] = False
        self.conflicts.append("/".join(parts))
        if self.fail_fast:
            self.finish()

    def finish(self) -> None:
        if self.conflicts and not self.overwrite:
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


def _merge(staging: str, dest_dir: Path, archive: str, *, overwrite: bool) -> None:
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
                elif not overwrite:
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


class _Staging:
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


def _install(
    staging: str, dest_dir: Path, checker: _Checker, writer: _Writer, *, overwrite: bool
) -> list[Path]:
    check = _DestinationCheck(dest_dir, checker.archive, overwrite=overwrite, fail_fast=False)
    for entry in checker.entries.values():
        check.add(entry)
    check.finish()
    _merge(staging, dest_dir, checker.archive, overwrite=overwrite)
    for parts, ns in writer.dir_times:
        if not check.is_dir.get(parts, False):  # only directories this run created
            try:
                os.utime(os.path.join(dest_dir, *parts), ns=(ns, ns))
            except OSError as exc:
                raise writer._dest_error(parts, exc) from exc
    return [Path(dest_dir, *parts) for parts in writer.files]


def _precheck_destination(dest_dir: Path, checker: _Checker, *, overwrite: bool) -> None:
    check = _DestinationCheck(dest_dir, checker.archive, overwrite=overwrite, fail_fast=False)
    for entry in checker.entries.values():
        check.add(entry)
    check.finish()


# --------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_XZ_MAGIC = b"\xfd7zXZ\x00"


def _is_tar_header(block: bytes) -> bool:
    return block[257:262] == b"ustar"


def _compression_of(head: bytes) -> ArchiveKind | None:
    if head[:2] == b"\x1f\x8b":
        return ArchiveKind.TAR_GZ
    if head[:3] == b"BZh":
        return ArchiveKind.TAR_BZ2
    if head[:6] == _XZ_MAGIC:
        return ArchiveKind.TAR_XZ
    return None


def _starts_with_tar(raw: BinaryIO, kind: ArchiveKind) -> bool:
    """Whether the decompressed stream starts with a tar header; False if undecodable."""
    try:
        stream = _decompressor(raw, kind)
        start = b""
        while len(start) < 512:
            more = stream.read(512 - len(start))
            if not more:
                break
            start += more
    except _READ_ERRORS:
        return False  # damaged (or, from a head, too short to tell)
    return _is_tar_header(start)


def detect_archive_kind_of(head: bytes) -> ArchiveKind | None:
    """Recognise an archive from the first bytes of a file (64 KiB is plenty).

    Like detect_archive_kind; None also when the head is too short to decide
    (a bzip2 stream emits nothing before its first block, up to 900 kB, ends).
    """
    if head[:4] in _ZIP_MAGICS:
        return ArchiveKind.ZIP
    kind = _compression_of(head)
    if kind is None:
        return ArchiveKind.TAR if _is_tar_header(head) else None
    return kind if _starts_with_tar(io.BytesIO(head), kind) else None


def detect_archive_kind(path: Path) -> ArchiveKind | None:
    """Recognise an archive by its content (the name is ignored).

    A compressed stream that does not hold a tar is not an archive (None): it
    is a plain download.  So is a compressed file too damaged to tell.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
            if head[:4] in _ZIP_MAGICS:
                return ArchiveKind.ZIP
            kind = _compression_of(head)
            if kind is None:
                return ArchiveKind.TAR if _is_tar_header(head) else None
            handle.seek(0)
            return kind if _starts_with_tar(handle, kind) else None
    except OSError as exc:
        raise ArchiveError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------
# Tar
# --------------------------------------------------------------------------


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


# The threaded reader asks its source for 8 x this much at a time: small enough
# that a download being extracted as it arrives is not waited on for long.
_GZIP_BLOCK = 256 * 1024


def _decompressor(raw: BinaryIO, kind: ArchiveKind, *, threaded: bool = False) -> BinaryIO:
    """A sequential reader of the tar inside ``raw`` (only ``read`` is relied on).

    threaded: inflate gzip in a worker thread (ISA-L releases the GIL), so it
    overlaps with parsing and writing: 260 MB of CSV extracted in 0.24 s
    instead of 0.30 s here. The caller must close the reader.
    """
    if kind is ArchiveKind.TAR:
        return raw
    if kind is ArchiveKind.TAR_GZ and threaded:
        return cast(BinaryIO, igzip_threaded.open(raw, "rb", threads=1, block_size=_GZIP_BLOCK))  # type: ignore[no-untyped-call]
    if kind is ArchiveKind.TAR_GZ:
        # ISA-L inflate: about 3x faster than zlib on the same stream.
        gz = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
        return cast(BinaryIO, gz)
    if kind is ArchiveKind.TAR_BZ2:
        return cast(BinaryIO, bz2.BZ2File(raw, "rb"))
    if kind is ArchiveKind.TAR_XZ:
        return cast(BinaryIO, lzma.LZMAFile(raw, "rb"))
    raise ValueError(f"not a tar kind: {kind}")


# PEP 706's filter arrived in 3.11.4; Debian 12's Python is 3.11.2. Our own
# checks above do not depend on it, so older interpreters still extract safely.
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


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _tar_chunks(handle: IO[bytes], size: int, checker: _Checker, raw: str) -> Iterator[bytes]:
    left = size
    while left > 0:
        try:
            chunk = handle.read(min(_CHUNK, left))
        except _READ_ERRORS as exc:
            raise checker.corrupt(_detail(exc), raw) from exc
        if not chunk:
            raise checker.corrupt("unexpected end of data", raw)
        left -= len(chunk)
        yield chunk


def _tar_kind(member: tarfile.TarInfo, checker: _Checker) -> _Kind:
    if member.isreg() or member.islnk():
        return _Kind.FILE
    if member.isdir():
        return _Kind.DIR
    if member.issym():
        return _Kind.SYMLINK
    if member.ischr() or member.isblk():
        raise checker.refuse(member.name, "device files are not allowed")
    if member.isfifo():
        raise checker.refuse(member.name, "FIFOs are not allowed")
    raise checker.refuse(member.name, f"unsupported tar entry type {member.type!r}")


def _walk_tar(stream: BinaryIO, checker: _Checker, writer: _Writer | None) -> None:
    """Check (and with a writer, extract) every member of a sequential tar stream."""
    last: str | None = None
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed by the with below
            fileobj=stream, mode="r|", bufsize=_CHUNK, tarinfo=_StrictTarInfo
        )
    except _READ_ERRORS as exc:
        raise checker.corrupt(_detail(exc)) from exc
    with archive:
        while True:
            try:
                member = archive.next()
            except _READ_ERRORS as exc:
                raise checker.corrupt(_detail(exc), last, after=True) from exc
            if member is None:
                break
            # tarfile keeps every TarInfo; a million-member stream does not need them.
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
            if kind is _Kind.DIR:
                writer.make_dir(parts, member.mode, member.mtime, raw)
            elif kind is _Kind.SYMLINK:
                assert checked.link_target is not None
                writer.make_symlink(parts, checked.link_target, member.mtime, raw)
            elif checked.hardlink_to is not None:
                writer.make_hardlink(parts, checked.hardlink_to, raw)
            else:
                try:
                    data = archive.extractfile(member)
                except _READ_ERRORS as exc:
                    raise checker.corrupt(_detail(exc), raw) from exc
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
                rest = padding.read(_CHUNK)
            except _READ_ERRORS as exc:
                raise checker.corrupt(_detail(exc)) from exc
            if not rest:
                break
            if rest.count(0) != len(rest):
                raise checker.corrupt("unexpected data after the end-of-archive marker")
            checker.count_padding(len(rest))


def _open_archive(archive: Path) -> tuple[BinaryIO, int]:
    try:
        handle = open(archive, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise ArchiveError(f"{archive.name}: cannot read: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        handle.close()
        raise ArchiveError(f"{archive.name}: cannot read: {exc.strerror or exc}") from exc
    return handle, size


def _scan_tar_file(archive: Path, kind: ArchiveKind, limits: ExtractLimits) -> _Checker:
    """Read-only first pass: every header checked, the whole stream verified."""
    handle, size = _open_archive(archive)
    with handle:
        checker = _Checker(archive.name, limits, lambda: size, declared_ratio_base=size)
        try:
            stream = _decompressor(handle, kind)
        except _READ_ERRORS as exc:
            raise checker.corrupt(_detail(exc)) from exc
        _walk_tar(stream, checker, None)
    return checker


def _extract_tar(
    fileobj: BinaryIO,
    dest_dir: Path,
    *,
    name: str,
    compression: ArchiveKind,
    overwrite: bool,
    limits: ExtractLimits,
    early_conflict_check: bool,
) -> list[Path]:
    if compression is ArchiveKind.ZIP:
        raise ValueError("zip archives need random access: use extract_archive")
    counter = _CountingReader(fileobj)
    checker = _Checker(name, limits, lambda: counter.count)
    if early_conflict_check:
        # Stop at the first conflict rather than after a long download.
        early = _DestinationCheck(dest_dir, name, overwrite=overwrite, fail_fast=True)
        checker.on_new_entry = early.add
    with _Staging(dest_dir, name) as staging:
        writer = _Writer(staging, checker, dest_dir)
        try:
            stream = _decompressor(cast(BinaryIO, counter), compression, threaded=True)
        except _READ_ERRORS as exc:
            raise checker.corrupt(_detail(exc)) from exc
        try:
            _walk_tar(stream, checker, writer)
        finally:
            stream.close()  # stops a threaded decompressor's worker
        return _install(staging, dest_dir, checker, writer, overwrite=overwrite)


def extract_tar_stream(
    fileobj: BinaryIO,
    dest_dir: Path,
    *,
    name: str,
    compression: ArchiveKind,
    overwrite: bool,
    limits: ExtractLimits,
) -> list[Path]:
    """Extract a tar read sequentially from ``fileobj`` (only ``read`` is used).

    ``compression`` is one of the TAR kinds; ``name`` is used in messages.
    Each member is checked before it is written; everything goes to a staging
    directory first, so a refusal or a damaged stream leaves dest_dir as it
    was.  Returns the final paths of the regular files extracted.
    """
    return _extract_tar(
        fileobj,
        dest_dir,
        name=name,
        compression=compression,
        overwrite=overwrite,
        limits=limits,
        early_conflict_check=True,
    )


# --------------------------------------------------------------------------
# Zip
# --------------------------------------------------------------------------

_ZIP_STORED = 0
_ZIP_DEFLATED = 8
_ZIP_BZIP2 = 12
_ZIP_LZMA = 14
_ZIP_METHODS = {_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2, _ZIP_LZMA}
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclass(slots=True)
class _ZipMember:
    info: zipfile.ZipInfo
    raw: str
    kind: _Kind
    mode: int | None
    mtime: float | None
    data_end_limit: int  # the next entry's local header (or the central directory)
    next_raw: str | None = None  # the entry whose header is at data_end_limit
    parts: tuple[str, ...] = ()
    data_offset: int = -1  # known once the local header has been read
    link_target: str | None = None  # known once a symlink's data has been read


def _zip_extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(extra):
        field_id, size = struct.unpack_from("<HH", extra, pos)
        yield field_id, extra[pos + 4 : pos + 4 + size]
        pos += 4 + size


def _zip_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x800:
        return info.orig_filename
    stored = info.orig_filename.encode("cp437")
    for field_id, data in _zip_extra_fields(info.extra):
        # Info-ZIP Unicode Path: version 1, CRC of the stored name, UTF-8 name.
        if (
            field_id == 0x7075
            and len(data) > 5
            and data[0] == 1
            and struct.unpack_from("<L", data, 1)[0] == zlib.crc32(stored)
        ):
            try:
                return data[5:].decode("utf-8")
            except UnicodeDecodeError:
                break
    try:
        return stored.decode("utf-8")
    except UnicodeDecodeError:
        return info.orig_filename


def _zip_stored_name(info: zipfile.ZipInfo) -> bytes:
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    for field_id, data in _zip_extra_fields(info.extra):
        # Extended timestamp: UTC, unlike the DOS local time in the header.
        if field_id == 0x5455 and len(data) >= 5 and data[0] & 1:
            return float(struct.unpack_from("<l", data, 1)[0])
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _zip_kind(info: zipfile.ZipInfo, raw: str, checker: _Checker) -> tuple[_Kind, int | None]:
    mode = (info.external_attr >> 16) & 0xFFFF
    file_type = stat.S_IFMT(mode)
    dir_name = raw.endswith(("/", "\\"))
    unix_mode = mode if mode & 0o7777 else None
    if file_type == stat.S_IFLNK:
        if dir_name:
            raise checker.refuse(raw, "symlink entry named like a directory")
        return _Kind.SYMLINK, None
    if file_type in (stat.S_IFCHR, stat.S_IFBLK):
        raise checker.refuse(raw, "device files are not allowed")
    if file_type == stat.S_IFIFO:
        raise checker.refuse(raw, "FIFOs are not allowed")
    if file_type == stat.S_IFSOCK:
        raise checker.refuse(raw, "sockets are not allowed")
    if file_type == stat.S_IFDIR or dir_name:
        return _Kind.DIR, unix_mode
    if file_type in (0, stat.S_IFREG):
        return _Kind.FILE, unix_mode
    raise checker.refuse(raw, f"unsupported file type {file_type:o}")


def _lzma_decompressor(props: bytes) -> lzma.LZMADecompressor:
    # Zip's LZMA: raw LZMA1 with a 5-byte properties block (lc/lp/pb + dict size).
    if len(props) != 5 or props[0] >= 9 * 5 * 5:
        raise ValueError("bad LZMA properties")
    pb, rest = divmod(props[0], 45)
    lp, lc = divmod(rest, 9)
    dict_size = struct.unpack("<L", props[1:5])[0]
    lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
    return lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[lzma1])


def _zip_chunks(handle: BinaryIO, member: _ZipMember, checker: _Checker) -> Iterator[bytes]:
    """Decompress one member with bounded memory, verifying size and CRC."""
    info, raw = member.info, member.raw
    produced = 0
    crc = 0

    def take(data: bytes) -> bytes:
        nonlocal produced, crc
        produced += len(data)
        if produced > info.file_size:
            raise checker.corrupt("more data than the entry declares", raw)
        crc = isal_zlib.crc32(data, crc)
        return data

    left = info.compress_size

    def read_compressed() -> bytes:
        nonlocal left
        try:
            data = handle.read(min(_CHUNK, left))
        except OSError as exc:
            raise checker.corrupt(_detail(exc), raw) from exc
        if not data:
            raise checker.corrupt("unexpected end of file", raw)
        left -= len(data)
        return data

    try:
        handle.seek(member.data_offset)
    except OSError as exc:
        raise checker.corrupt(_detail(exc), raw) from exc
    method = info.compress_type
    try:
        if method == _ZIP_STORED:
            if info.compress_size != info.file_size:
                raise checker.corrupt("stored entry sizes differ", raw)
            while left > 0:
                yield take(read_compressed())
        elif method == _ZIP_DEFLATED:
            inflater = isal_zlib.decompressobj(-15)
            pending = b""
            while not inflater.eof:
                if not pending:
                    if left == 0:
                        raise checker.corrupt("compressed data ends early", raw)
                    pending = read_compressed()
                before = len(pending)
                out = inflater.decompress(pending, _OUT_CHUNK)
                pending = inflater.unconsumed_tail
                if not out and len(pending) == before and not inflater.eof:
                    raise checker.corrupt("deflate data makes no progress", raw)
                if out:
                    yield take(out)
        else:
            decomp: bz2.BZ2Decompressor | lzma.LZMADecompressor
            if method == _ZIP_BZIP2:
                decomp = bz2.BZ2Decompressor()
            else:
                header = read_compressed() if left else b""
                if len(header) < 4:
                    raise checker.corrupt("bad LZMA header", raw)
                props_size = struct.unpack_from("<H", header, 2)[0]
                decomp = _lzma_decompressor(header[4 : 4 + props_size])
                first = header[4 + props_size :]
                if first:
                    yield take(decomp.decompress(first, _OUT_CHUNK))
            stalled = 0
            while not decomp.eof:
                if decomp.needs_input:
                    if left == 0:
                        if method == _ZIP_LZMA and produced == info.file_size:
                            break  # LZMA without an end marker stops at the size
                        raise checker.corrupt("compressed data ends early", raw)
                    out = decomp.decompress(read_compressed(), _OUT_CHUNK)
                else:
                    out = decomp.decompress(b"", _OUT_CHUNK)
                    stalled = 0 if out else stalled + 1
                    if stalled > 64:  # never expected; guards against a busy loop
                        raise checker.corrupt("compressed data makes no progress", raw)
                if out:
                    yield take(out)
    except (zlib.error, _ISAL_ERROR, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise checker.corrupt(_detail(exc), raw) from exc
    if produced != info.file_size:
        raise checker.corrupt(
            f"size mismatch ({produced} bytes, the entry declares {info.file_size})", raw
        )
    if crc != info.CRC:
        raise checker.corrupt("CRC mismatch", raw)


def _scan_zip_directory(handle: BinaryIO, archive_size: int, checker: _Checker) -> list[_ZipMember]:
    """Check every entry the central directory lists (no member data is read).

    Returns the members in file order, so extraction reads the archive front
    to back (which lets it follow a download).
    """
    try:
        with zipfile.ZipFile(handle) as zf:
            infos = zf.infolist()
            directory_start = zf.start_dir
    except _READ_ERRORS as exc:
        raise checker.corrupt(_detail(exc)) from exc
    if len(infos) > checker.limits.max_members:
        raise checker.refuse(
            _zip_name(infos[checker.limits.max_members]),
            f"archive has more than {checker.limits.max_members} entries",
        )
    members: list[_ZipMember] = []
    for info in infos:
        raw = _zip_name(info)
        kind, mode = _zip_kind(info, raw, checker)
        if kind is not _Kind.DIR:
            if info.flag_bits & 0x1:
                raise checker.refuse(raw, "encrypted entries are not supported")
            if info.compress_type not in _ZIP_METHODS:
                raise checker.refuse(raw, f"unsupported compression method {info.compress_type}")
            if kind is _Kind.SYMLINK and info.file_size > _MAX_PATH_BYTES:
                raise checker.refuse(raw, "symlink target too long")
        # A symlink's target is in its data: checked when the data is read.
        checked = checker.check(raw, kind, size=0 if kind is _Kind.DIR else info.file_size)
        members.append(
            _ZipMember(
                info,
                raw,
                kind,
                mode,
                _zip_mtime(info),
                data_end_limit=min(directory_start, archive_size),
                parts=checked.entry.parts if checked is not None else (),
            )
        )
    members.sort(key=lambda m: m.info.header_offset)
    for member, following in itertools.pairwise(members):
        member.data_end_limit = following.info.header_offset
        member.next_raw = following.raw
        if following.info.header_offset == member.info.header_offset:
            raise checker.refuse(following.raw, _overlap_reason(member.raw))
    return members


def _overlap_reason(other: str | None) -> str:
    what = "the central directory" if other is None else f'entry "{_show(other)}"'
    return f"its data overlaps {what} (zip bomb?)"


def _zip_locate(handle: BinaryIO, member: _ZipMember, archive_size: int, checker: _Checker) -> None:
    """Read and check a member's local header; find where its data starts."""
    info, raw = member.info, member.raw
    try:
        handle.seek(info.header_offset)
        header = handle.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header)
        stored = handle.read(fields[10])
    except _READ_ERRORS as exc:
        raise checker.corrupt(f"bad local header ({_detail(exc)})", raw) from exc
    if fields[0] != b"PK\x03\x04":
        raise checker.corrupt("bad local header signature", raw)
    # A name that differs between the two directories is a smuggling trick:
    # different tools would extract different files.
    if stored != _zip_stored_name(info):
        raise checker.corrupt("local header name differs from the central directory", raw)
    member.data_offset = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
    end = member.data_offset + info.compress_size
    if end > archive_size:
        raise checker.corrupt("entry data extends past the end of the file", raw)
    if end > member.data_end_limit:
        # One byte range read as two files is how non-recursive zip bombs work.
        raise checker.refuse(raw, _overlap_reason(member.next_raw))


def _zip_prepare(
    handle: BinaryIO, member: _ZipMember, archive_size: int, checker: _Checker
) -> None:
    """Local header, and for a symlink its (small) target: all before writing it."""
    _zip_locate(handle, member, archive_size, checker)
    if member.kind is _Kind.SYMLINK:
        data = b"".join(_zip_chunks(handle, member, checker))
        try:
            member.link_target = _link_target(member.parts, data.decode("utf-8", "surrogateescape"))
        except _Refused as refused:
            raise checker.refuse(member.raw, refused.reason) from None


def _extract_zip(
    handle: BinaryIO,
    archive_size: int,
    dest_dir: Path,
    *,
    name: str,
    overwrite: bool,
    limits: ExtractLimits,
    prescan: bool,
) -> list[Path]:
    checker = _Checker(name, limits, lambda: archive_size, declared_ratio_base=archive_size)
    members = _scan_zip_directory(handle, archive_size, checker)
    if prescan:
        # A file on disk: every local header and symlink target, before writing.
        for member in members:
            _zip_prepare(handle, member, archive_size, checker)
    _precheck_destination(dest_dir, checker, overwrite=overwrite)
    with _Staging(dest_dir, name) as staging:
        writer = _Writer(staging, checker, dest_dir)
        for member in members:
            if not member.parts:
                continue  # the archive root ("./")
            if not prescan:
                _zip_prepare(handle, member, archive_size, checker)
            if member.kind is _Kind.DIR:
                writer.make_dir(member.parts, member.mode, member.mtime, member.raw)
            elif member.kind is _Kind.SYMLINK:
                assert member.link_target is not None
                writer.make_symlink(member.parts, member.link_target, member.mtime, member.raw)
            else:
                writer.write_file(
                    member.parts,
                    _zip_chunks(handle, member, checker),
                    member.mode,
                    member.mtime,
                    member.raw,
                )
        return _install(staging, dest_dir, checker, writer, overwrite=overwrite)


def extract_zip_stream(
    fileobj: BinaryIO,
    size: int,
    dest_dir: Path,
    *,
    name: str,
    overwrite: bool,
    limits: ExtractLimits,
) -> list[Path]:
    """Extract a zip from a seekable ``fileobj`` of ``size`` bytes that may still be arriving.

    The central directory (at the end) is read and checked first, then the
    members are read front to back, each one checked (local header, overlap,
    symlink target) before it is written; the staging directory makes it
    all or nothing.  Returns the final paths of the regular files.
    """
    return _extract_zip(
        fileobj, size, dest_dir, name=name, overwrite=overwrite, limits=limits, prescan=False
    )


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def archive_member_paths(
    archive: Path, kind: ArchiveKind, *, limits: ExtractLimits | None = None
) -> list[PurePosixPath]:
    """Relative paths of the regular files (incl. hard links) the archive would create.

    Applies every refusal rule (so it raises ArchiveError for a hostile or
    corrupt archive, like extract_archive would).  Symlinks and directories
    are not listed.  For tars this reads (and CRC-checks) the whole stream
    once; for zips only the directories, so damaged zip *data* is found by
    extract_archive.  extract_archive does its own conflict check, so calling
    this first is only needed to know the names.
    """
    limits = limits or ExtractLimits()
    if kind is ArchiveKind.ZIP:
        handle, size = _open_archive(archive)
        with handle:
            checker = _Checker(archive.name, limits, lambda: size, declared_ratio_base=size)
            for member in _scan_zip_directory(handle, size, checker):
                _zip_prepare(handle, member, size, checker)
    else:
        checker = _scan_tar_file(archive, kind, limits)
    return [PurePosixPath(*e.parts) for e in checker.entries.values() if e.kind is _Kind.FILE]


def extract_archive(
    archive: Path,
    dest_dir: Path,
    *,
    overwrite: bool,
    limits: ExtractLimits = ExtractLimits(),  # frozen, so sharing the default is safe
    kind: ArchiveKind | None = None,
) -> list[Path]:
    """Extract ``archive`` into ``dest_dir``, all or nothing.

    ``kind`` defaults to detection by content.  Returns the final paths of
    the extracted regular files (incl. hard links), in archive order.
    Raises ArchiveError (refused / corrupt archive; the archive file is left
    in place), OverwriteConflictError (before anything is moved) or
    DestinationError.
    """
    if kind is None:
        kind = detect_archive_kind(archive)
        if kind is None:
            raise ArchiveError(f"{archive.name}: not a zip or tar archive")
    if kind is not ArchiveKind.ZIP:
        # First pass: every header and the stream's CRC, before writing a byte.
        scanned = _scan_tar_file(archive, kind, limits)
        _precheck_destination(dest_dir, scanned, overwrite=overwrite)
        handle, _ = _open_archive(archive)
        with handle:
            return _extract_tar(
                handle,
                dest_dir,
                name=archive.name,
                compression=kind,
                overwrite=overwrite,
                limits=limits,
                early_conflict_check=False,  # the pre-scan already compared everything
            )

    handle, size = _open_archive(archive)
    with handle:
        return _extract_zip(
            handle,
            size,
            dest_dir,
            name=archive.name,
            overwrite=overwrite,
            limits=limits,
            prescan=True,
        )
