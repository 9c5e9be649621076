"""One file into one object: parts uploaded as the bytes arrive, visible only when complete.

A file no bigger than one part goes up in a single PUT at commit (a PUT is
atomic). A bigger one is a multipart upload: each full part is sent while the
next one fills, at most PARTS_IN_FLIGHT parts per sink at a time, so memory
stays at a few parts whatever the file's size. CompleteMultipartUpload, in
commit, is what makes the object appear under its key.

Resume (see uploads.py): the writer always starts at offset 0 (the engine
reads the file again to hash it), but a part already stored by an earlier run
of the same remote file is not sent again when its size and MD5 match.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..._exceptions import TransientError
from ...plan.names import shown
from ...sources import RemoteFile
from ..base import PartWriter
from .client import request_failures
from .uploads import UploadRecord, drop_record, load_record, save_record, state_directory

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("dataferry.sink.s3")

MIB = 2**20
PART_SIZE = 8 * MIB
# S3 allows 10,000 parts; leave room so a file that grows a little still fits.
MAX_PARTS = 9000
MTIME_KEY = "dataferry-mtime"


def part_size_for(size: int) -> int:
    """Parts of 8 MiB, bigger (whole MiB) for files above ~70 GiB."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // MIB) * MIB)


class S3PartWriter(PartWriter):
    def __init__(self, sink: S3Sink, relative: str, remote: RemoteFile) -> None:
        self.sink = sink
        self.relative = relative
        self.key = sink.key(relative)
        self.remote = remote
        self.part_size = part_size_for(remote.size)
        self.multipart = remote.size > self.part_size
        self.offset = 0
        self.reused_parts = 0
        self.sent_parts = 0
        self._buffer = bytearray()
        self._written = 0
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._stored: dict[int, tuple[int, str]] = {}
        self._upload_id: str | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._failure: BaseException | None = None

    @property
    def where(self) -> str:
        return self.sink.describe(self.relative)

    async def open(self) -> None:
        if not self.multipart:
            return
        bucket = self.sink.bucket
        record = load_record(bucket, self.key)
        if record is not None and record.carries(self.remote, bucket, self.key, self.part_size):
            stored = await self.sink.call(self._list_parts, record.upload_id)
            if stored is not None:
                self._upload_id = record.upload_id
                self._stored = stored
                if stored:
                    log.info(
                        "%s: resuming its upload: %d part(s) already stored",
                        shown(self.where),
                        len(stored),
                    )
                return
        if record is not None:
            # Another remote file (or an upload the server no longer has): start over.
            await self.sink.call(self._abort, record.upload_id)
            drop_record(bucket, self.key)
        await self._create()

    def _list_parts(self, upload_id: str) -> dict[int, tuple[int, str]] | None:
        client = self.sink.client
        stored: dict[int, tuple[int, str]] = {}
        marker = 0
        try:
            while True:
                page = client.list_parts(
                    Bucket=self.sink.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
                for part in page.get("Parts", []):
                    stored[int(part["PartNumber"])] = (int(part["Size"]), str(part["ETag"]))
                if not page.get("IsTruncated"):
                    return stored
                marker = int(page["NextPartNumberMarker"])
        except Exception as exc:
            if _code(exc) == "NoSuchUpload":
                return None
            raise self.sink.error(exc, self.where) from None

    def _abort(self, upload_id: str) -> None:
        # Best effort: an upload already gone, or one we may not abort, is no failure.
        with contextlib.suppress(*request_failures()):
            self.sink.client.abort_multipart_upload(
                Bucket=self.sink.bucket, Key=self.key, UploadId=upload_id
            )

    async def _create(self) -> None:
        def create() -> str:
            try:
                answer = self.sink.client.create_multipart_upload(
                    Bucket=self.sink.bucket,
                    Key=self.key,
                    Metadata={MTIME_KEY: str(self.remote.mtime)},
                )
            except Exception as exc:
                raise self.sink.error(exc, self.where) from None
            return str(answer["UploadId"])

        self._upload_id = await self.sink.call(create)
        record = UploadRecord(
            bucket=self.sink.bucket,
            key=self.key,
            upload_id=self._upload_id,
            part_size=self.part_size,
            remote_path=self.remote.path,
            size=self.remote.size,
            mtime=self.remote.mtime,
        )
        try:
            save_record(record)
        except OSError as exc:
            # A read-only home (some containers): the upload works, it just cannot resume.
            log.warning(
                "%s: cannot keep its upload id in %s (%s); a cut upload will start over",
                shown(self.where),
                state_directory(),
                exc.strerror or exc,
            )

    def held_prefix(self) -> Iterator[bytes]:
        return iter(())  # offset is always 0: see the module's docstring

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def write(self, data: bytes) -> None:
        self._raise_failure()
        self._buffer += data
        self._written += len(data)
        if not self.multipart:
            if self._written > self.part_size:
                raise TransientError(
                    f"{self.remote.path}: got more than the {self.remote.size} bytes listed"
                )
            return
        while len(self._buffer) >= self.part_size:
            with memoryview(self._buffer) as view:
                part = bytes(view[: self.part_size])  # one copy, not a slice and a copy
            del self._buffer[: self.part_size]
            await self._send(part)

    async def _send(self, data: bytes) -> None:
        number = self._next_part
        self._next_part += 1
        await self.send_part(number, data)

    async def send_part(self, number: int, data: bytes) -> None:
        """Upload data as part number (not again when an earlier run stored it:
        same size and MD5); waits for a slot, returns once the upload is under way."""
        stored = self._stored.get(number)
        if stored is not None and stored[0] == len(data):
            digest = await asyncio.to_thread(lambda: hashlib.md5(data).hexdigest())
            if stored[1].strip('"') == digest:
                self._etags[number] = stored[1]
                self.reused_parts += 1
                return
        if number > 10_000:
            raise TransientError(f"{self.remote.path}: grew past {self.remote.size} bytes")
        slots = self.sink.part_slots()
        await slots.acquire()
        future = asyncio.get_running_loop().run_in_executor(
            self.sink.executor, self._upload_part, number, data
        )

        def done(finished: asyncio.Future[None]) -> None:
            slots.release()
            self._pending.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                self._failure = self._failure or finished.exception()

        self._pending.add(future)
        future.add_done_callback(done)

    def _upload_part(self, number: int, data: bytes) -> None:
        assert self._upload_id is not None
        try:
            answer = self.sink.client.upload_part(
                Bucket=self.sink.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
        except Exception as exc:
            if _code(exc) == "NoSuchUpload":
                # Aborted behind our back (a lifecycle rule, another tool): start over next try.
                drop_record(self.sink.bucket, self.key)
                raise TransientError(f"{self.where}: the multipart upload is gone") from None
            raise self.sink.error(exc, self.where) from None
        self._etags[number] = str(answer["ETag"])
        self.sent_parts += 1

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def commit(self, mtime: int) -> str:
        self._raise_failure()
        refused = self.sink.refused.get(self.relative)
        if refused is not None:
            # Extraction refused this archive while it downloaded: it must not appear.
            await self._drain()
            self.discard()
            raise refused
        if self._written != self.remote.size:
            await self._drain()
            raise TransientError(
                f"{self.remote.path}: got {self._written} of {self.remote.size} bytes"
            )
        if not self.multipart:
            body, self._buffer = bytes(self._buffer), bytearray()
            await self.sink.call(self._put, body, mtime)
        else:
            if self._buffer:
                last, self._buffer = bytes(self._buffer), bytearray()
                await self._send(last)
            await self._drain()
            self._raise_failure()
            await self.sink.call(self._complete, mtime)
            drop_record(self.sink.bucket, self.key)
            log.info(
                "%s: %d part(s) uploaded, %d already stored",
                shown(self.where),
                self.sent_parts,
                self.reused_parts,
            )
        self.sink.closed(self.key)
        return self.where

    def _put(self, body: bytes, mtime: int) -> None:
        try:
            self.sink.client.put_object(
                Bucket=self.sink.bucket, Key=self.key, Body=body, Metadata={MTIME_KEY: str(mtime)}
            )
        except Exception as exc:
            raise self.sink.error(exc, self.where) from None

    def _complete(self, mtime: int) -> None:
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
        client = self.sink.client
        try:
            client.complete_multipart_upload(
                Bucket=self.sink.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            if mtime != self.remote.mtime:
                # The mtime was fixed when the upload began; a server-side copy sets another.
                client.copy_object(
                    Bucket=self.sink.bucket,
                    Key=self.key,
                    CopySource={"Bucket": self.sink.bucket, "Key": self.key},
                    Metadata={MTIME_KEY: str(mtime)},
                    MetadataDirective="REPLACE",
                )
        except Exception as exc:
            raise self.sink.error(exc, self.where) from None

    async def close(self) -> None:
        # Parts under way finish (they are reused by the next run); the upload stays.
        await self._drain()  # waits only: a part's failure is kept in its task
        self._buffer = bytearray()
        self.sink.closed(self.key)

    def discard(self) -> None:
        if self._upload_id is not None:
            self._abort(self._upload_id)
        drop_record(self.sink.bucket, self.key)
        self.sink.closed(self.key)


def _code(exc: BaseException) -> str:
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
