"""Safe, fast extraction of zip and tar (plain, gz, bz2, xz) archives: the public API.

What is refused, what counts as corrupt, how names are normalised and what
happens in the destination: docs/extraction.md.  The modules, each one job:

* ``archive_file``: extract_archive and archive_member_paths for files on disk;
* ``tar``, ``zip``: the two formats (extract_tar_stream, extract_zip_stream);
* ``kinds``: ArchiveKind, detection by magic bytes, tar decompression;
* ``policy``: which entry names and symlink targets are allowed;
* ``checks``: ExtractLimits and the per-entry checker (collisions, counts, ratio);
* ``staging``: the staging directory, writing into it, moving into place;
* ``reading``: chunk size, the errors a damaged archive raises, opening files.
"""

from __future__ import annotations

from .archive_file import archive_member_paths, extract_archive
from .checks import ExtractLimits
from .kinds import ArchiveKind, detect_archive_kind, detect_archive_kind_of, may_be_archive
from .policy import normalize_member_path
from .staging import StagedFile
from .tar import extract_tar_stream
from .zip import extract_zip_stream

__all__ = [
    "ArchiveKind",
    "ExtractLimits",
    "StagedFile",
    "archive_member_paths",
    "detect_archive_kind",
    "detect_archive_kind_of",
    "extract_archive",
    "extract_tar_stream",
    "extract_zip_stream",
    "may_be_archive",
    "normalize_member_path",
]
