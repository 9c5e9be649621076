"""Tasks: what to fetch for one task's settings, fetching it with retries, then extracting.

This layer knows nothing about the command line: it takes validated settings,
reports through a :class:`TaskObserver` and raises dataferry exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from ._connection import ConnectionSettings
from ._downloads import (
    destination_error,
    download_file,
    part_path,
    requests_budget,
    sync_directory,
)
from ._exceptions import DestinationError, OverwriteConflictError, TransferError
from ._observer import TaskObserver
from ._overlap import start_extraction
from ._settings import TaskSettings
from ._ssh import Connector, RemoteFile, RemoteHandle, RemoteSession, TransientError
from ._state import DestinationState, task_lock
from .extract import ExtractLimits, detect_archive_kind, extract_archive

log = logging.getLogger("dataferry.tasks")

# Many small files are round-trip bound: keep many in flight on one connection.
# Big files share the connection's request budget, so fewer at once.
FILES_IN_FLIGHT = 16
SMALL_FILES_IN_FLIGHT = 64
SMALL_FILE_BYTES = 1024 * 1024
# Each small file costs two round trips (open, read): on a far link, more at
# once means fewer waves. 200 x 64 KiB at 30 ms RTT: 1.01 s with 64 in flight,
# 0.93 s with 128, 0.92 s with 200; on loopback 128 gained nothing.
FAR_SMALL_FILES_IN_FLIGHT = 128
FAR_ROUND_TRIP = 0.005  # seconds
# Archives at least this big are extracted while they download.
OVERLAP_MIN_BYTES = 4 * 1024 * 1024
MAX_RETRY_WAIT = 60.0


@dataclass(frozen=True)
class PlannedFile:
    remote: RemoteFile
    local: Path


@dataclass
class TaskReport:
    task: str
    downloaded: list[Path] = field(default_factory=list)
    extracted: list[Path] = field(default_factory=list)
    removed_archives: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    bytes_transferred: int = 0
    tries: int = 0
    seconds: float = 0.0

    @property
    def files(self) -> list[Path]:
        """What the task leaves on disk for the user."""
        kept = [path for path in self.downloaded if path not in self.removed_archives]
        return kept + self.extracted


async def plan_task(session: RemoteSession, settings: TaskSettings) -> list[PlannedFile]:
    """Map remote files to local paths; a remote folder maps into the save folder."""
    remote_path = settings.remote_file_path
    found = await session.find(remote_path, settings.include)
    if isinstance(found, RemoteFile):
        local = settings.file_save_path
        if local.is_dir() or str(local).endswith(("/", "\\")):
            local = local / found.name
        return [PlannedFile(found, local)]
    save_dir = settings.file_save_path
    if save_dir.exists() and not save_dir.is_dir():
        raise DestinationError(
            f"{settings.name}: remote {remote_path} is a folder but file_save_path "
            f"{save_dir} is a file"
        )
    if not found:
        log.warning(
            "%s: no files in %s match %s", settings.name, remote_path, ", ".join(settings.include)
        )
    return [PlannedFile(remote, save_dir / remote.name) for remote in found]


def check_conflicts(settings: TaskSettings, plan: list[PlannedFile]) -> None:
    """With overwrite false, refuse before transferring anything."""
    if settings.overwrite:
        return
    existing = [str(item.local) for item in plan if item.local.exists()]
    if existing:
        shown = ", ".join(existing[:5]) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise OverwriteConflictError(
            f"{settings.name}: overwrite is false and {len(existing)} file(s) already exist: "
            f"{shown} (set overwrite to true, or move them away)"
        )


def files_in_flight(session: RemoteSession, todo: list[PlannedFile]) -> int:
    """How many files to fetch at once: more when they are small, more still when far."""
    average = sum(item.remote.size for item in todo) / len(todo)
    if average >= SMALL_FILE_BYTES:
        return FILES_IN_FLIGHT
    if session.round_trip < FAR_ROUND_TRIP:
        return SMALL_FILES_IN_FLIGHT
    # Each file in flight holds a local file descriptor (and a remote handle).
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = FAR_SMALL_FILES_IN_FLIGHT
    if descriptors != resource.RLIM_INFINITY:
        limit = min(limit, max(SMALL_FILES_IN_FLIGHT, descriptors // 4))
    return min(limit, session.max_open_handles or limit)


class _TaskRun:
    """The state of one task across its tries: what is planned and what is done."""

    def __init__(self, settings: TaskSettings, connector: Connector, observer: TaskObserver):
        self.settings = settings
        self.connector = connector
        self.observer = observer
        self.report = TaskReport(settings.name)
        self.planned = False  # the first try's plan checks conflicts and skips
        self.state: DestinationState | None = None
        self.up_to_date: set[str] = set()
        self.done: dict[str, PlannedFile] = {}
        self.limits = ExtractLimits(
            max_total_bytes=settings.max_extract_bytes, max_ratio=settings.max_compression_ratio
        )
        # Archives extracted while they downloaded (remote path -> files).
        self.extracted_early: dict[str, list[Path]] = {}

    async def attempt(self) -> None:
        """One try: connect, (re)plan, fetch whatever is not done yet."""
        name = self.settings.name
        self.report.tries += 1
        self.observer.state_changed(name, "connecting")
        async with self.connector.session() as session:
            self.observer.state_changed(name, "listing")
            plan = await plan_task(session, self.settings)
            if not self.planned:
                self._first_plan(plan)
                self.planned = True
            todo = [
                item
                for item in plan
                if item.remote.path not in self.done and item.remote.path not in self.up_to_date
            ]
            digests: dict[str, str] = {}
            if self.settings.verify == "sha256":
                digests = await session.sha256_digests([item.remote.path for item in todo])
            self.observer.state_changed(name, "transferring")
            await self._fetch_all(session, todo, digests)
        # Keep the plan's order so results are reported deterministically.
        self.report.downloaded = [
            self.done[item.remote.path].local for item in plan if item.remote.path in self.done
        ]

    def _first_plan(self, plan: list[PlannedFile]) -> None:
        """Skip what is already here (incremental), then refuse conflicts before any transfer."""
        settings = self.settings
        if plan:
            self.state = DestinationState(plan[0].local.parent)
        if self.state is not None and not settings.force:
            for item in plan:
                if self.state.up_to_date(
                    item.local, item.remote, keep_archive=settings.keep_zip_tar_file
                ):
                    self.up_to_date.add(item.remote.path)
                    self.report.up_to_date.append(item.local)
                    self.observer.file_skipped(item.remote.path, "up to date")
            if self.up_to_date:
                log.info(
                    "%s: %d file(s) already up to date (same size and mtime as the remote); "
                    "skipping them (use --force to fetch again)",
                    settings.name,
                    len(self.up_to_date),
                )
        todo = [item for item in plan if item.remote.path not in self.up_to_date]
        check_conflicts(settings, todo)
        self.observer.plan_ready(settings.name, len(todo), sum(p.remote.size for p in todo))

    async def _fetch_all(
        self, session: RemoteSession, todo: list[PlannedFile], digests: dict[str, str]
    ) -> None:
        if not todo:
            return
        parallel = min(files_in_flight(session, todo), len(todo))
        requests_per_file = max(4, requests_budget(session) // parallel)
        queue: asyncio.Queue[PlannedFile] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                await self._fetch_one(session, item, requests_per_file, digests)

        workers = [asyncio.create_task(worker()) for _ in range(parallel)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            folders = {
                self.done[item.remote.path].local.parent
                for item in todo
                if item.remote.path in self.done
            }
            for folder in folders:
                try:
                    await asyncio.to_thread(sync_directory, folder)
                except OSError as exc:
                    raise destination_error(folder, exc) from None

    async def _fetch_one(
        self,
        session: RemoteSession,
        item: PlannedFile,
        requests_in_flight: int,
        digests: dict[str, str],
    ) -> None:
        # One open serves the archive probe and the download (round trips add
        # up on a far link); nothing waits for the close.
        handle = await session.open_file(item.remote.path)
        try:
            await self._fetch_open(session, handle, item, requests_in_flight, digests)
        finally:
            session.close_later(handle)

    async def _fetch_open(
        self,
        session: RemoteSession,
        handle: RemoteHandle,
        item: PlannedFile,
        requests_in_flight: int,
        digests: dict[str, str],
    ) -> None:
        overlap = None
        if item.remote.size >= OVERLAP_MIN_BYTES and not part_path(item.local).exists():
            overlap = await start_extraction(
                handle,
                item.remote,
                item.local,
                overwrite=self.settings.overwrite,
                limits=self.limits,
            )
            if overlap is not None:
                self.observer.state_changed(self.settings.name, "transferring+extracting")
        download = asyncio.ensure_future(
            download_file(
                session,
                handle,
                item.remote,
                item.local,
                self.observer,
                requests_in_flight=requests_in_flight,
                expected_sha256=digests.get(item.remote.path),
                on_written=overlap.reader.advance if overlap else None,
            )
        )
        try:
            if overlap is not None:
                either: list[asyncio.Future[Any]] = [download, overlap.done]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                conflict = overlap.conflict()
                if conflict is not None and not download.done():
                    # overwrite is false and the archive's first entries (a zip's
                    # directory) already clash with existing files: stop now, not
                    # after the whole download. The partial file stays, resumable.
                    download.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await download
                    raise conflict
            result = await download
        except BaseException as exc:
            if not download.done():
                download.cancel()
                with contextlib.suppress(BaseException):
                    await download
            if overlap is not None:
                await overlap.cancel(str(exc))
            raise
        self.done[item.remote.path] = PlannedFile(item.remote, result.path)
        self.report.bytes_transferred += result.bytes_transferred
        if overlap is not None:
            self.extracted_early[item.remote.path] = await overlap.finish()

    def extract(self) -> None:
        """Extract each downloaded archive beside it, then record the results."""
        settings = self.settings
        for item in (self.done[path] for path in sorted(self.done)):
            path = item.local
            extracted: list[Path] = []
            early = self.extracted_early.get(item.remote.path)
            kind = None if early is not None else detect_archive_kind(path)
            if early is not None:
                extracted = early
                self.report.extracted.extend(early)
            elif kind is not None:
                self.observer.state_changed(settings.name, "extracting")
                log.info("extracting %s (%s) into %s", path, kind.value, path.parent)
                extracted = extract_archive(
                    path,
                    path.parent,
                    overwrite=settings.overwrite,
                    limits=self.limits,
                    kind=kind,
                )
                self.report.extracted.extend(extracted)
            kept = (kind is None and early is None) or settings.keep_zip_tar_file
            if not kept:
                try:
                    path.unlink()
                except OSError as exc:
                    raise destination_error(path, exc) from None
                self.report.removed_archives.append(path)
                log.debug("removed archive %s", path)
            if self.state is not None:
                self.state.record(path, item.remote, extracted, kept)
        if self.state is not None and self.done:
            try:
                self.state.save()
            except OSError as exc:
                raise destination_error(self.state.path, exc) from None


async def run_task(
    settings: TaskSettings,
    connection: ConnectionSettings | Connector,
    observer: TaskObserver | None = None,
) -> TaskReport:
    """Fetch and extract one task. Transient failures are retried with backoff.

    ``connection`` may be a :class:`Connector` whose first connection is
    already under way (the command line starts it early); the caller closes it.
    """
    if not isinstance(connection, Connector):
        connector = Connector(connection)
        try:
            return await run_task(settings, connector, observer)
        finally:
            await connector.aclose()
    observer = observer or TaskObserver()
    run = _TaskRun(settings, connection, observer)
    started = time.monotonic()
    observer.task_started(settings.name)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: %s; try %d of %d in %.1f s",
            settings.name,
            error,
            state.attempt_number + 1,
            settings.max_tries,
            delay,
        )
        observer.retrying(
            settings.name, state.attempt_number, settings.max_tries, delay, str(error)
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(settings.max_tries),
        wait=wait_exponential_jitter(
            multiplier=settings.retry_delay,
            max=max(MAX_RETRY_WAIT, settings.retry_delay),
            jitter=settings.retry_delay / 2,
        ),
        retry=retry_if_exception_type(TransientError),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        with task_lock(settings.name, settings.file_save_path):
            try:
                async for attempt in retrying:
                    with attempt:
                        await run.attempt()
            except TransientError as exc:
                raise TransferError(
                    f"{settings.name}: failed after {settings.max_tries} "
                    f"{'try' if settings.max_tries == 1 else 'tries'}: {exc}"
                ) from None
            run.extract()
    except Exception as exc:
        observer.state_changed(settings.name, "failed")
        observer.error(settings.name, str(exc))
        raise
    run.report.seconds = time.monotonic() - started
    observer.state_changed(settings.name, "done")
    observer.task_finished(
        settings.name, len(run.report.files), run.report.bytes_transferred, run.report.seconds
    )
    return run.report
