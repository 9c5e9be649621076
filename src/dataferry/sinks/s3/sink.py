"""The S3 sink: ``s3://bucket/prefix`` as a destination, through any S3-compatible store.

Each result is one object under the prefix (``prefix/relative``). Part
writers stream into multipart uploads (writer.py); archives are extracted
into a private temporary folder, with the same checks as on disk, and each
member is then uploaded as its own object (extract.py). The lock is local
(one run per destination per machine), like the local sink's.

The bucket and the credentials are checked when the lock is taken, before
anything is transferred: a missing bucket, wrong credentials, no permission or
an unreachable endpoint is one line and an exit code (docs/object-storage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from filelock import FileLock, Timeout

from ..._exceptions import ArchiveError, DestinationError
from ...extract import ArchiveKind, ExtractLimits, detect_archive_kind_of
from ...sources import RemoteFile
from ..base import Extracted, Held, RegionWriter, Sink
from ..local import LOCK_WAIT_SECONDS, lock_directory
from .client import make_client, request_failures, s3_error
from .uploads import has_record
from .writer import MTIME_KEY, S3PartWriter, _code, part_size_for

log = logging.getLogger("dataferry.sink.s3")

SCHEME = "s3://"
# Parts being uploaded at once across the sink: memory is about this many parts.
PARTS_IN_FLIGHT = 4
HEAD_BYTES = 64 * 1024

T = TypeVar("T")

_clients: dict[int, Any] = {}
_clients_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def parse_url(text: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; also of the ``s3:/bucket/prefix``
    a pathlib.Path makes of it."""
    if text.startswith(SCHEME):
        rest = text[len(SCHEME) :]
    elif text.startswith("s3:/"):
        rest = text[len("s3:/") :]
    else:
        raise ValueError(f"not an s3:// URL: {text}")
    bucket, _, prefix = rest.partition("/")
    return bucket, "/".join(part for part in prefix.split("/") if part not in ("", "."))


def url_of(folder: Path | str) -> str:
    bucket, prefix = parse_url(str(folder))
    return f"{SCHEME}{bucket}/{prefix}" if prefix else f"{SCHEME}{bucket}"


def shared_client() -> Any:
    """One client per process (it is thread-safe and keeps a connection pool)."""
    with _clients_lock:
        if 0 not in _clients:
            _clients[0] = make_client()
        return _clients[0]


def forget_clients() -> None:
    """Drop the cached client (tests change the environment between runs)."""
    with _clients_lock:
        _clients.clear()


def shared_executor() -> ThreadPoolExecutor:
    global _executor
    with _clients_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(PARTS_IN_FLIGHT + 2, thread_name_prefix="dataferry-s3")
        return _executor


class _ObjectReader(io.RawIOBase):
    """A GET's body as a file object (verify and extraction read results back)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError, *request_failures()):
            self._body.close()
        super().close()


class S3Sink(Sink):
    """Objects under ``s3://bucket/prefix``."""

    def __init__(self, folder: Path | str) -> None:
        self.bucket, self.prefix = parse_url(str(folder))
        self.url = url_of(folder)
        self._open_keys: set[str] = set()
        # Archives extraction refused: never left under the prefix (see _refuse).
        self.refused: dict[str, ArchiveError] = {}
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    # -- plumbing ---------------------------------------------------------------

    @property
    def client(self) -> Any:
        return shared_client()

    @property
    def executor(self) -> ThreadPoolExecutor:
        return shared_executor()

    def key(self, relative: str) -> str:
        relative = relative.strip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative and relative != "." else self.prefix

    def error(self, exc: BaseException, where: str, *, starting: bool = False) -> BaseException:
        return s3_error(exc, where, starting=starting)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def part_slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(PARTS_IN_FLIGHT))
        return self._slots[1]

    def closed(self, key: str) -> None:
        self._open_keys.discard(key)

    # -- the Sink interface -------------------------------------------------------

    def describe(self, relative: str = "") -> str:
        key = self.key(relative) if relative else self.prefix
        return f"{SCHEME}{self.bucket}/{key}" if key else f"{SCHEME}{self.bucket}"

    def check(self) -> None:
        """The bucket exists and these credentials may list it (one request)."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise self.error(exc, self.url, starting=True) from None

    @contextlib.contextmanager
    def lock(self, task: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        self.check()
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:24]
        path = lock_directory() / f"s3-{digest}.lock"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create {path.parent}: {exc.strerror}") from None
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning(
                "%s: another dataferry run is writing to %s; waiting up to %.0f s for it",
                task,
                self.url,
                wait,
            )
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise DestinationError(
                    f"{task}: another dataferry run still writes to {self.url} after "
                    f"{wait:.0f} s; let it finish (or stop it) and run again"
                ) from None
        try:
            yield
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                path.unlink()

    def _head(self, relative: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.key(relative)
            )
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.error(exc, self.describe(relative)) from None
        return answer

    def held(self, relative: str) -> Held | None:
        head = self._head(relative)
        if head is None:
            return None
        recorded = head.get("Metadata", {}).get(MTIME_KEY)
        try:
            mtime = int(recorded)
        except (TypeError, ValueError):
            modified = head.get("LastModified")
            mtime = int(modified.timestamp()) if isinstance(modified, datetime) else 0
        return Held(int(head["ContentLength"]), mtime)

    def exists(self, relative: str) -> bool:
        if self._head(relative) is not None:
            return True
        try:
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.key(relative) + "/", MaxKeys=1
            )
        except Exception as exc:
            raise self.error(exc, self.describe(relative)) from None
        return bool(page.get("KeyCount") or page.get("Contents"))

    def has_partial(self, relative: str) -> bool:
        key = self.key(relative)
        return key in self._open_keys or has_record(self.bucket, key)

    async def open_part(self, relative: str, source: RemoteFile) -> S3PartWriter:
        writer = S3PartWriter(self, relative, source)
        await writer.open()
        self._open_keys.add(writer.key)
        return writer

    async def open_regions(
        self, relative: str, source: RemoteFile, segments: list[tuple[int, int]]
    ) -> RegionWriter | None:
        """Segments uploading their own multipart parts (regions.py); None for a file
        of one part (a single PUT at commit: nothing to split)."""
        from .regions import S3RegionWriter

        if source.size <= part_size_for(source.size):
            return None
        writer = S3RegionWriter(self, relative, source, segments)
        await writer.open()
        self._open_keys.add(writer.key)
        return writer

    async def finish(self) -> None:
        return None  # every commit is already durable on the server

    def remove(self, relative: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(relative))
        except Exception as exc:
            raise self.error(exc, self.describe(relative)) from None

    def open_result(self, relative: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey"):
                raise FileNotFoundError(self.describe(relative)) from None
            raise self.error(exc, self.describe(relative)) from None
        return io.BufferedReader(_ObjectReader(answer["Body"]), 1 << 20)

    def archive_kind(self, relative: str) -> ArchiveKind | None:
        if relative in self.refused:
            raise self.refused[relative]
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key(relative), Range=f"bytes=0-{HEAD_BYTES - 1}"
            )
            head = answer["Body"].read()
        except Exception as exc:
            raise self.error(exc, self.describe(relative)) from None
        return detect_archive_kind_of(head)

    def extract_file(
        self,
        relative: str,
        kind: ArchiveKind,
        *,
        overwrite: bool,
        owned: frozenset[str],
        limits: ExtractLimits,
        before_install: Callable[[list[Extracted]], None] | None = None,
    ) -> list[Extracted]:
        held = self.held(relative)
        size = held.size if held is not None else 0
        with self.open_result(relative) as stream, self._refuse(relative):
            return self.extract_stream(
                stream,
                size,
                relative,
                kind,
                overwrite=overwrite,
                owned=owned,
                limits=limits,
                before_install=before_install,
            )

    def extract_stream(
        self,
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
        from .extract import extract_into_objects

        with self._refuse(relative):
            return extract_into_objects(
                self,
                stream,
                size,
                relative,
                kind,
                overwrite=overwrite,
                owned=owned,
                limits=limits,
                before_install=before_install,
            )

    @contextlib.contextmanager
    def _refuse(self, relative: str) -> Iterator[None]:
        """A refused archive leaves nothing under the prefix, the archive included
        (on disk it is kept for inspection; a bucket is often served to others).

        Committed already: removed now. Still uploading: its writer aborts the
        upload at commit (S3PartWriter.commit) and raises the same error.
        """
        try:
            yield
        except ArchiveError as exc:
            self.refused[relative] = exc
            if self.held(relative) is not None:
                self.remove(relative)
            raise
