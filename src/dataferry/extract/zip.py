"""Zip: the central directory is checked first, then members are read front to back.

``scan_zip_directory`` checks every entry the central directory lists;
``prepare_zip_member`` reads a member's local header (and a symlink's target)
and refuses overlapping data; ``extract_zip`` writes the members, inflating
each with bounded output per call and verifying its size and CRC.
"""

from __future__ import annotations

import bz2
import itertools
import lzma
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import isal_zlib

from .checks import EntryChecker, EntryKind, ExtractLimits
from .policy import MAX_PATH_BYTES, Refused, canonical_link_target, display_name
from .reading import ISAL_ERROR, READ_CHUNK, READ_ERRORS, error_detail
from .staging import (
    ExtractionTarget,
    Placement,
    StagedFile,
    install,
    new_writer,
    open_staging,
    precheck_destination,
)

_OUT_CHUNK = 1 << 20  # most decompressed bytes per call: bounds memory on bombs, stays in cache

_ZIP_STORED = 0
_ZIP_DEFLATED = 8
_ZIP_BZIP2 = 12
_ZIP_LZMA = 14
_ZIP_METHODS = {_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2, _ZIP_LZMA}
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclass(slots=True)
class ZipMember:
    info: zipfile.ZipInfo
    raw: str
    kind: EntryKind
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


def _zip_kind(
    info: zipfile.ZipInfo, raw: str, checker: EntryChecker
) -> tuple[EntryKind, int | None]:
    mode = (info.external_attr >> 16) & 0xFFFF
    file_type = stat.S_IFMT(mode)
    dir_name = raw.endswith(("/", "\\"))
    unix_mode = mode if mode & 0o7777 else None
    if file_type == stat.S_IFLNK:
        if dir_name:
            raise checker.refuse(raw, "symlink entry named like a directory")
        return EntryKind.SYMLINK, None
    if file_type in (stat.S_IFCHR, stat.S_IFBLK):
        raise checker.refuse(raw, "device files are not allowed")
    if file_type == stat.S_IFIFO:
        raise checker.refuse(raw, "FIFOs are not allowed")
    if file_type == stat.S_IFSOCK:
        raise checker.refuse(raw, "sockets are not allowed")
    if file_type == stat.S_IFDIR or dir_name:
        return EntryKind.DIR, unix_mode
    if file_type in (0, stat.S_IFREG):
        return EntryKind.FILE, unix_mode
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


def _zip_chunks(handle: BinaryIO, member: ZipMember, checker: EntryChecker) -> Iterator[bytes]:
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
            data = handle.read(min(READ_CHUNK, left))
        except OSError as exc:
            raise checker.corrupt(error_detail(exc), raw) from exc
        if not data:
            raise checker.corrupt("unexpected end of file", raw)
        left -= len(data)
        return data

    try:
        handle.seek(member.data_offset)
    except OSError as exc:
        raise checker.corrupt(error_detail(exc), raw) from exc
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
    except (zlib.error, ISAL_ERROR, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise checker.corrupt(error_detail(exc), raw) from exc
    if produced != info.file_size:
        raise checker.corrupt(
            f"size mismatch ({produced} bytes, the entry declares {info.file_size})", raw
        )
    if crc != info.CRC:
        raise checker.corrupt("CRC mismatch", raw)


def scan_zip_directory(
    handle: BinaryIO, archive_size: int, checker: EntryChecker
) -> list[ZipMember]:
    """Check every entry the central directory lists (no member data is read).

    Returns the members in file order, so extraction reads the archive front
    to back (which lets it follow a download).
    """
    try:
        with zipfile.ZipFile(handle) as zf:
            infos = zf.infolist()
            directory_start = zf.start_dir
    except READ_ERRORS as exc:
        raise checker.corrupt(error_detail(exc)) from exc
    if len(infos) > checker.limits.max_members:
        raise checker.refuse(
            _zip_name(infos[checker.limits.max_members]),
            f"archive has more than {checker.limits.max_members} entries",
        )
    members: list[ZipMember] = []
    for info in infos:
        raw = _zip_name(info)
        kind, mode = _zip_kind(info, raw, checker)
        if kind is not EntryKind.DIR:
            if info.flag_bits & 0x1:
                raise checker.refuse(raw, "encrypted entries are not supported")
            if info.compress_type not in _ZIP_METHODS:
                raise checker.refuse(raw, f"unsupported compression method {info.compress_type}")
            if kind is EntryKind.SYMLINK and info.file_size > MAX_PATH_BYTES:
                raise checker.refuse(raw, "symlink target too long")
        # A symlink's target is in its data: checked when the data is read.
        checked = checker.check(raw, kind, size=0 if kind is EntryKind.DIR else info.file_size)
        members.append(
            ZipMember(
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
    what = "the central directory" if other is None else f'entry "{display_name(other)}"'
    return f"its data overlaps {what} (zip bomb?)"


def _zip_locate(
    handle: BinaryIO, member: ZipMember, archive_size: int, checker: EntryChecker
) -> None:
    """Read and check a member's local header; find where its data starts."""
    info, raw = member.info, member.raw
    try:
        handle.seek(info.header_offset)
        header = handle.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header)
        stored = handle.read(fields[10])
    except READ_ERRORS as exc:
        raise checker.corrupt(f"bad local header ({error_detail(exc)})", raw) from exc
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


def prepare_zip_member(
    handle: BinaryIO, member: ZipMember, archive_size: int, checker: EntryChecker
) -> None:
    """Local header, and for a symlink its (small) target: all before writing it."""
    _zip_locate(handle, member, archive_size, checker)
    if member.kind is EntryKind.SYMLINK:
        data = b"".join(_zip_chunks(handle, member, checker))
        try:
            member.link_target = canonical_link_target(
                member.parts, data.decode("utf-8", "surrogateescape")
            )
        except Refused as refused:
            raise checker.refuse(member.raw, refused.reason) from None


def extract_zip(
    handle: BinaryIO,
    archive_size: int,
    dest_dir: Path,
    *,
    name: str,
    placement: Placement,
    limits: ExtractLimits,
    prescan: bool,
) -> list[Path]:
    """Check and write every member through the staging directory.

    prescan: the archive is complete (a file on disk): check every local
    header and symlink target before writing anything, not as each is reached.
    """
    checker = EntryChecker(name, limits, lambda: archive_size, declared_ratio_base=archive_size)
    members = scan_zip_directory(handle, archive_size, checker)
    if prescan:
        # A file on disk: every local header and symlink target, before writing.
        for member in members:
            prepare_zip_member(handle, member, archive_size, checker)
    precheck_destination(dest_dir, checker, placement=placement)
    with open_staging(dest_dir, name, placement) as staging:
        writer = new_writer(staging, checker, dest_dir, placement)
        for member in members:
            if not member.parts:
                continue  # the archive root ("./")
            if not prescan:
                prepare_zip_member(handle, member, archive_size, checker)
            if member.kind is EntryKind.DIR:
                writer.make_dir(member.parts, member.mode, member.mtime, member.raw)
            elif member.kind is EntryKind.SYMLINK:
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
        return install(staging, dest_dir, checker, writer, placement=placement)


def extract_zip_stream(
    fileobj: BinaryIO,
    size: int,
    dest_dir: Path,
    *,
    name: str,
    overwrite: bool,
    limits: ExtractLimits,
    owned: frozenset[Path] = frozenset(),
    before_install: Callable[[list[StagedFile]], None] | None = None,
    target: ExtractionTarget | None = None,
) -> list[Path]:
    """Extract a zip from a seekable ``fileobj`` of ``size`` bytes that may still be arriving.

    The central directory (at the end) is read and checked first, then the
    members are read front to back, each one checked (local header, overlap,
    symlink target) before it is written; the staging directory makes it
    all or nothing.  Returns the final paths of the regular files.
    """
    return extract_zip(
        fileobj,
        size,
        dest_dir,
        name=name,
        placement=Placement(overwrite, owned, before_install, target),
        limits=limits,
        prescan=False,
    )
