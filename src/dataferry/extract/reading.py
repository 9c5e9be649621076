"""Reading archive input: chunk size, what a damaged archive raises, opening a file."""

from __future__ import annotations

import lzma
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, cast

from isal import isal_zlib

from dataferry._exceptions import ArchiveError

READ_CHUNK = 256 << 10  # bytes read per call (smaller chunks stay in CPU cache: measured faster)

ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # the stub types it as an instance

# What a damaged archive can raise while being read and decompressed.  Only
# ever caught around read calls, so a write failure is never mistaken for it.
READ_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes gzip.BadGzipFile (bad magic, CRC mismatch)
    EOFError,  # truncated compressed stream
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    ISAL_ERROR,
    lzma.LZMAError,
    struct.error,
    ValueError,  # malformed numeric / text fields in headers
    NotImplementedError,  # zipfile: "zip file version 24.2" and the like
)


def error_detail(exc: BaseException) -> str:
    """An exception as one line of text, for a corrupt-archive message."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def open_archive(archive: Path) -> tuple[BinaryIO, int]:
    """Open an archive file for reading; returns the handle (the caller closes it) and size."""
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
