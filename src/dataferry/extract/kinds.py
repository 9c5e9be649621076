"""Archive kinds: what dataferry extracts and how each kind is recognised and read.

``ArchiveKind`` lists the formats; ``detect_archive_kind`` and
``detect_archive_kind_of`` recognise them by magic bytes (never by name);
``open_tar_stream`` undoes a tar kind's compression.  Detection uses the same
readers as extraction, so a kind recognised here is one tar.py can read.
"""

from __future__ import annotations

import bz2
import enum
import io
import lzma
from pathlib import Path
from typing import BinaryIO, cast

from isal import igzip, igzip_threaded

from dataferry._exceptions import ArchiveError

from .reading import READ_ERRORS


class ArchiveKind(enum.Enum):
    """Archive formats dataferry extracts."""

    ZIP = "zip"
    TAR = "tar"
    TAR_GZ = "tar.gz"
    TAR_BZ2 = "tar.bz2"
    TAR_XZ = "tar.xz"


# The threaded reader asks its source for 8 x this much at a time: small enough
# that a download being extracted as it arrives is not waited on for long.
_GZIP_BLOCK = 256 * 1024


def open_tar_stream(raw: BinaryIO, kind: ArchiveKind, *, threaded: bool = False) -> BinaryIO:
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
        stream = open_tar_stream(raw, kind)
        start = b""
        while len(start) < 512:
            more = stream.read(512 - len(start))
            if not more:
                break
            start += more
    except READ_ERRORS:
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


def may_be_archive(head: bytes) -> bool:
    """False when the first bytes rule out every archive kind (no file read needed)."""
    return head[:4] in _ZIP_MAGICS or _compression_of(head) is not None or _is_tar_header(head)


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
