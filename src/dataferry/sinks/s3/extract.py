"""Archives into objects: each member streamed into its own object, all or nothing.

Extraction runs through extract/ with the same policy, limits and checks as
for a folder; only where entries go differs (an ExtractionTarget). Each
regular file streams, as the archive is read, into a multipart upload under
the archive's folder, which is *not* completed: nothing is visible until the
whole archive passed. Then the manifest hears the results (before_install),
every upload is completed, and a tar's hard links become server-side copies.
A refused or damaged archive aborts every upload: nothing under the prefix.
Memory stays at one part (8 MiB) per member being written.

Object stores have no links: a symbolic link the policy accepts on disk is
dropped with a warning naming it. A zip that is not seekable (a kept archive
read back from the bucket) is first copied to a temporary file: a zip's
directory is at its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from ..._exceptions import OverwriteConflictError
from ...extract import (
    ArchiveKind,
    ExtractLimits,
    StagedFile,
    extract_tar_stream,
    extract_zip_stream,
)
from ...extract.checks import EntryChecker
from ...extract.staging import ExtractionTarget, Placement, StagingWriter
from ...plan.names import shown
from ..base import Extracted
from .client import request_failures
from .writer import MTIME_KEY, PART_SIZE

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("dataferry.sink.s3")


class _Upload:
    def __init__(self, key: str, upload_id: str | None, mtime: int) -> None:
        self.key = key
        self.upload_id = upload_id  # None: empty, PUT at install
        self.mtime = mtime
        self.parts: list[dict[str, Any]] = []


class ObjectWriter(StagingWriter):
    """Receives checked entries: files into pending multipart uploads, links dropped."""

    def __init__(self, sink: S3Sink, folder: str, checker: EntryChecker, dest_dir: Path) -> None:
        super().__init__("", checker, dest_dir)
        self.sink = sink
        self.folder = folder
        self.uploads: dict[tuple[str, ...], _Upload] = {}
        self.links: dict[tuple[str, ...], tuple[str, ...]] = {}

    def relative(self, parts: tuple[str, ...]) -> str:
        path = "/".join(parts)
        return f"{self.folder}/{path}" if self.folder else path

    def _mkdir(self, parts: tuple[str, ...], mode: int, raw: str) -> None:
        if parts in self.uploads or parts in self.links:
            raise self._collision(raw)
        self._dirs.add(parts)  # object stores have no folders: only remembered

    def write_file(
        self,
        parts: tuple[str, ...],
        chunks: Iterator[bytes],
        mode: int | None,
        mtime: float | None,
        raw: str,
    ) -> None:
        self._parents(parts, raw)
        if parts in self.uploads or parts in self.links or parts in self._dirs:
            raise self._collision(raw)
        relative = self.relative(parts)
        stamp = int(mtime) if mtime is not None else int(time.time())
        upload = _Upload(self.sink.key(relative), None, stamp)
        self.uploads[parts] = upload
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        for chunk in chunks:  # the iterator raises ArchiveError for damaged data
            self.checker.count_written(len(chunk), raw)
            digest.update(chunk)
            size += len(chunk)
            buffer += chunk
            while len(buffer) >= PART_SIZE:
                with memoryview(buffer) as view:
                    part = bytes(view[:PART_SIZE])
                del buffer[:PART_SIZE]
                self._send(upload, relative, part)
        if buffer or upload.upload_id is not None:
            self._send(upload, relative, bytes(buffer))
        self.files.append(parts)
        self.digests[parts] = (size, digest.hexdigest())

    def _send(self, upload: _Upload, relative: str, data: bytes) -> None:
        client, bucket = self.sink.client, self.sink.bucket
        try:
            if upload.upload_id is None:
                answer = client.create_multipart_upload(
                    Bucket=bucket, Key=upload.key, Metadata={MTIME_KEY: str(upload.mtime)}
                )
                upload.upload_id = str(answer["UploadId"])
            number = len(upload.parts) + 1
            answer = client.upload_part(
                Bucket=bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                PartNumber=number,
                Body=data,
            )
        except Exception as exc:
            raise self.sink.error(exc, self.sink.describe(relative)) from None
        upload.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def make_symlink(
        self, parts: tuple[str, ...], target: str, mtime: float | None, raw: str
    ) -> None:
        log.warning(
            "dropped the link %s -> %s: object storage has no links",
            shown(self.sink.describe(self.relative(parts))),
            shown(target),
        )

    def make_hardlink(self, parts: tuple[str, ...], origin: tuple[str, ...], raw: str) -> None:
        self._parents(parts, raw)
        if parts in self.uploads or parts in self.links or parts in self._dirs:
            raise self._collision(raw)
        self.links[parts] = origin  # a copy of origin's object, made at install
        self.files.append(parts)
        self.digests[parts] = self.digests[origin]

    def mtime_of(self, parts: tuple[str, ...]) -> int:
        return self.uploads[self.links.get(parts, parts)].mtime

    def abort(self) -> None:
        for upload in self.uploads.values():
            if upload.upload_id is not None:
                with contextlib.suppress(*request_failures()):
                    self.sink.client.abort_multipart_upload(
                        Bucket=self.sink.bucket, Key=upload.key, UploadId=upload.upload_id
                    )


class ObjectTarget(ExtractionTarget):
    """An archive's members as objects under folder (relative to the sink)."""

    def __init__(self, sink: S3Sink, folder: str) -> None:
        self.sink = sink
        self.folder = folder
        self.writers: list[ObjectWriter] = []

    @contextlib.contextmanager
    def staging(self, dest_dir: Path, archive: str) -> Iterator[str]:
        try:
            yield ""
        except BaseException:
            for writer in self.writers:
                writer.abort()
            raise

    def writer(self, staging: str, checker: EntryChecker, dest_dir: Path) -> StagingWriter:
        writer = ObjectWriter(self.sink, self.folder, checker, dest_dir)
        self.writers.append(writer)
        return writer

    def install(
        self,
        staging: str,
        dest_dir: Path,
        checker: EntryChecker,
        writer: StagingWriter,
        *,
        placement: Placement,
    ) -> list[Path]:
        assert isinstance(writer, ObjectWriter)
        staged = []
        for parts in writer.files:
            size, sha256 = writer.digests[parts]
            staged.append(StagedFile("/".join(parts), size, writer.mtime_of(parts), sha256))
        if placement.before_install is not None:
            placement.before_install(staged)  # conflicts are refused here (extract_into_objects)
        sink, client = self.sink, self.sink.client
        for parts, upload in writer.uploads.items():
            where = sink.describe(writer.relative(parts))
            try:
                if upload.upload_id is None:
                    client.put_object(
                        Bucket=sink.bucket,
                        Key=upload.key,
                        Body=b"",
                        Metadata={MTIME_KEY: str(upload.mtime)},
                    )
                else:
                    client.complete_multipart_upload(
                        Bucket=sink.bucket,
                        Key=upload.key,
                        UploadId=upload.upload_id,
                        MultipartUpload={"Parts": upload.parts},
                    )
                    upload.upload_id = None  # completed: nothing left to abort
            except Exception as exc:
                raise sink.error(exc, where) from None
        for parts, origin in writer.links.items():
            source = writer.uploads[origin]
            try:
                client.copy_object(
                    Bucket=sink.bucket,
                    Key=sink.key(writer.relative(parts)),
                    CopySource={"Bucket": sink.bucket, "Key": source.key},
                )
            except Exception as exc:
                raise sink.error(exc, sink.describe(writer.relative(parts))) from None
        return [Path(dest_dir, *parts) for parts in writer.files]


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
                listed = ", ".join(shown(sink.describe(p)) for p in clashes[:5])
                raise OverwriteConflictError(
                    f"extracting {archive.name} would overwrite {listed}"
                    f"{' and more' if len(clashes) > 5 else ''}; set overwrite to true "
                    "to replace them"
                )
        if before_install is not None:
            before_install(results)

    target = ObjectTarget(sink, folder)
    # The checks compare entries with an empty local folder: conflicts with
    # objects are found in staged() above.
    with tempfile.TemporaryDirectory(prefix="dataferry-s3-extract-") as scratch:
        empty = Path(scratch) / "empty"
        empty.mkdir()
        if kind is ArchiveKind.ZIP:
            if not stream.seekable():
                local = Path(scratch) / "archive.zip"
                with open(local, "wb") as copy:
                    shutil.copyfileobj(stream, copy, 1 << 20)
                with open(local, "rb") as handle:
                    size = local.stat().st_size
                    extract_zip_stream(
                        handle,
                        size,
                        empty,
                        name=archive.name,
                        overwrite=True,
                        before_install=staged,
                        limits=limits,
                        target=target,
                    )
            else:
                extract_zip_stream(
                    stream,
                    size,
                    empty,
                    name=archive.name,
                    overwrite=True,
                    before_install=staged,
                    limits=limits,
                    target=target,
                )
        else:
            extract_tar_stream(
                stream,
                empty,
                name=archive.name,
                compression=kind,
                overwrite=True,
                before_install=staged,
                limits=limits,
                target=target,
            )
    return results
