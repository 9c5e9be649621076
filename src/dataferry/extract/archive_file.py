"""Archive files on disk: list what one would create, or extract it.

The kind is never taken from the file name: the caller gives it, or it is
detected from the content (kinds.py); tar.py or zip.py then does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from dataferry._exceptions import ArchiveError

from .checks import EntryChecker, EntryKind, ExtractLimits
from .kinds import ArchiveKind, detect_archive_kind
from .reading import open_archive
from .staging import Placement, StagedFile, precheck_destination
from .tar import extract_tar, scan_tar_file
from .zip import extract_zip, prepare_zip_member, scan_zip_directory


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
        handle, size = open_archive(archive)
        with handle:
            checker = EntryChecker(archive.name, limits, lambda: size, declared_ratio_base=size)
            for member in scan_zip_directory(handle, size, checker):
                prepare_zip_member(handle, member, size, checker)
    else:
        checker = scan_tar_file(archive, kind, limits)
    return [PurePosixPath(*e.parts) for e in checker.entries.values() if e.kind is EntryKind.FILE]


def extract_archive(
    archive: Path,
    dest_dir: Path,
    *,
    overwrite: bool,
    limits: ExtractLimits = ExtractLimits(),  # noqa: B008 - frozen, so sharing the default is safe
    kind: ArchiveKind | None = None,
    owned: frozenset[Path] = frozenset(),
    before_install: Callable[[list[StagedFile]], None] | None = None,
) -> list[Path]:
    """Extract ``archive`` into ``dest_dir``, all or nothing.

    ``kind`` defaults to detection by content.  Returns the final paths of
    the extracted regular files (incl. hard links), in archive order.
    Raises ArchiveError (refused / corrupt archive; the archive file is left
    in place), OverwriteConflictError (before anything is moved) or
    DestinationError.
    """
    placement = Placement(overwrite, owned, before_install)
    if kind is None:
        kind = detect_archive_kind(archive)
        if kind is None:
            raise ArchiveError(f"{archive.name}: not a zip or tar archive")
    if kind is not ArchiveKind.ZIP:
        # First pass: every header and the stream's CRC, before writing a byte.
        scanned = scan_tar_file(archive, kind, limits)
        precheck_destination(dest_dir, scanned, placement=placement)
        handle, _ = open_archive(archive)
        with handle:
            return extract_tar(
                handle,
                dest_dir,
                name=archive.name,
                compression=kind,
                placement=placement,
                limits=limits,
                early_conflict_check=False,  # the pre-scan already compared everything
            )

    handle, size = open_archive(archive)
    with handle:
        return extract_zip(
            handle,
            size,
            dest_dir,
            name=archive.name,
            placement=placement,
            limits=limits,
            prescan=True,
        )
