"""Archives into objects: extracted with the usual checks, then one object per member.

Extraction runs through extract/ unchanged (the same policy, limits and
all-or-nothing staging) into a private temporary folder; only when the whole
archive passed are its regular files uploaded, each to its own key under the
archive's folder. A refused or damaged archive therefore leaves nothing under
the prefix. Object stores have no links: a symbolic link the policy would
accept on disk is dropped with a warning (hard links in a tar become copies).
The temporary folder is removed whatever happens.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from ..._exceptions import OverwriteConflictError
from ...extract import (
    ArchiveKind,
    ExtractLimits,
    StagedFile,
    extract_tar_stream,
    extract_zip_stream,
)
from ...plan.names import shown
from ..base import Extracted
from .writer import MTIME_KEY, PART_SIZE

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("dataferry.sink.s3")


def extract_into_objects(
    sink: S3Sink,
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
    archive = PurePosixPath(relative)
    folder = "" if str(archive.parent) == "." else archive.parent.as_posix()
    join: Callable[[str], str] = (lambda p: f"{folder}/{p}") if folder else (lambda p: p)
    results: list[Extracted] = []

    def staged(files: list[StagedFile]) -> None:
        nonlocal results
        results = [Extracted(join(f.relative), f.size, f.mtime, f.sha256) for f in files]
        if not overwrite:
            clashes = [r.path for r in results if r.path not in owned and sink.exists(r.path)]
            if clashes:
                shown_clashes = ", ".join(shown(sink.describe(p)) for p in clashes[:5])
                raise OverwriteConflictError(
                    f"extracting {archive.name} would overwrite {shown_clashes}"
                    f"{' and more' if len(clashes) > 5 else ''}; set overwrite to true "
                    "to replace them"
                )
        if before_install is not None:
            before_install(results)

    scratch = Path(tempfile.mkdtemp(prefix="dataferry-s3-extract-"))
    try:
        if kind is ArchiveKind.ZIP and not stream.seekable():
            # A kept archive read back from the bucket: a zip needs its end first.
            local = scratch / ".archive"
            with open(local, "wb") as copy:
                shutil.copyfileobj(stream, copy, 1 << 20)
            size = local.stat().st_size
            target = scratch / "out"
            target.mkdir()
            with open(local, "rb") as handle:
                _extract(handle, size, target, archive.name, kind, limits, staged)
            local.unlink()
        else:
            target = scratch / "out"
            target.mkdir()
            _extract(stream, size, target, archive.name, kind, limits, staged)
        _drop_links(target, sink, folder)
        for result in results:
            local_relative = result.path[len(folder) + 1 :] if folder else result.path
            _upload_file(sink, target / local_relative, result.path, result.mtime)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _extract(
    stream: BinaryIO,
    size: int,
    target: Path,
    name: str,
    kind: ArchiveKind,
    limits: ExtractLimits,
    staged: Callable[[list[StagedFile]], None],
) -> None:
    if kind is ArchiveKind.ZIP:
        extract_zip_stream(
            stream, size, target, name=name, overwrite=True, before_install=staged, limits=limits
        )
    else:
        extract_tar_stream(
            stream,
            target,
            name=name,
            compression=kind,
            overwrite=True,
            before_install=staged,
            limits=limits,
        )


def _drop_links(target: Path, sink: S3Sink, folder: str) -> None:
    for directory, names, files in os.walk(target):
        for name in names + files:
            path = Path(directory) / name
            if path.is_symlink():
                relative = path.relative_to(target).as_posix()
                where = sink.describe(f"{folder}/{relative}" if folder else relative)
                log.warning(
                    "dropped the link %s -> %s: object storage has no links",
                    shown(where),
                    shown(os.readlink(path)),
                )


def _upload_file(sink: S3Sink, path: Path, relative: str, mtime: int) -> None:
    """One regular file to one object: a PUT, or a multipart upload above one part."""
    client, key = sink.client, sink.key(relative)
    where = sink.describe(relative)
    metadata = {MTIME_KEY: str(mtime)}
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            if size <= PART_SIZE:
                client.put_object(
                    Bucket=sink.bucket, Key=key, Body=handle.read(), Metadata=metadata
                )
                return
            upload = client.create_multipart_upload(Bucket=sink.bucket, Key=key, Metadata=metadata)
            upload_id = upload["UploadId"]
            try:
                parts = []
                number = 1
                while data := handle.read(PART_SIZE):
                    answer = client.upload_part(
                        Bucket=sink.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    number += 1
                client.complete_multipart_upload(
                    Bucket=sink.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                client.abort_multipart_upload(Bucket=sink.bucket, Key=key, UploadId=upload_id)
                raise
    except OSError:
        raise
    except Exception as exc:
        raise sink.error(exc, where) from None
