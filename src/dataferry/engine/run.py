"""Run one task: plan against the manifest, fetch with retries, extract, record.

This layer knows nothing about the command line: it takes validated settings,
a SourceConnector, reports through a :class:`TaskObserver` and raises
dataferry exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Callable
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

from .._connection import ConnectionSettings
from .._exceptions import FrozenError, TransferError, TransientError
from .._settings import TaskSettings, default_manifest_path
from ..extract import ArchiveKind, ExtractLimits, may_be_archive
from ..manifest import Entry, ManifestStore, SourceRecord, destination_label
from ..observe import TaskObserver, TaskState
from ..plan import Plan, PlannedFile, files_in_flight, plan_files
from ..plan.listing import list_task
from ..plan.names import shown
from ..sinks import Extracted, Sink, sink_factory_for, sink_url
from ..sources import Source, SourceConnector
from .after_fetch import act_after_fetch, still_as_listed
from .copy import Copied, DigestMismatch, copy_file, requests_budget
from .decisions import Decisions, decide, frozen_differences, make_entry
from .segments import SegmentedFetches
from .space import check_free_space
from .tee import OverlappedExtraction, start_extraction

log = logging.getLogger("dataferry.engine")

# Archives at least this big are extracted while they download.
OVERLAP_MIN_BYTES = 4 * 1024 * 1024
MAX_RETRY_WAIT = 60.0
SinkFactory = Callable[[Path], Sink]
# Completed files are recorded in the manifest at least this often during a run.
RECORD_INTERVAL = 10.0


@dataclass
class TaskReport:
    task: str
    downloaded: list[Path] = field(default_factory=list)
    extracted: list[Path] = field(default_factory=list)
    removed_archives: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    # Archives extracted while they downloaded (the rest after their download).
    extracted_while_downloading: list[Path] = field(default_factory=list)
    bytes_transferred: int = 0
    tries: int = 0
    seconds: float = 0.0
    # The destination folder (the summary names it); None before the first listing.
    folder: Path | None = None

    @property
    def files(self) -> list[Path]:
        """What the task leaves on disk for the user."""
        kept = [path for path in self.downloaded if path not in self.removed_archives]
        return kept + self.extracted


@dataclass
class _Fetched:
    item: PlannedFile
    copied: Copied
    early: list[Extracted] | None = None  # extracted while it downloaded
    recorded: bool = False
    kind: ArchiveKind | None = None
    kind_known: bool = False
    noted: bool = False  # an archive recorded as downloaded, not yet extracted


class _TaskRun:
    """The state of one task across its tries: what is planned and what is done."""

    def __init__(
        self,
        settings: TaskSettings,
        connector: SourceConnector,
        observer: TaskObserver,
        sink_factory: SinkFactory,
        store: ManifestStore | None = None,
    ):
        self.settings = settings
        self.sink_factory = sink_factory
        self.connector = connector
        self.observer = observer
        self.report = TaskReport(settings.name)
        self.store = store or ManifestStore(settings.manifest or default_manifest_path(None))
        self.sink: Sink | None = None
        self.plan: Plan | None = None
        self.decisions: Decisions | None = None
        self.done: dict[str, _Fetched] = {}
        self.limits = ExtractLimits(
            max_total_bytes=settings.max_extract_bytes, max_ratio=settings.max_compression_ratio
        )
        self.last_record = time.monotonic()
        self.first_todo: list[PlannedFile] = []

    @property
    def name(self) -> str:
        return self.settings.name

    async def attempt(self) -> None:
        """One try: connect, (re)plan, fetch whatever is not done yet."""
        self.report.tries += 1
        self.observer.state_changed(self.name, TaskState.CONNECTING)
        async with self.connector.session() as source:
            source.request_timeout = self.settings.request_timeout
            self.observer.state_changed(self.name, TaskState.LISTING)
            listing = await list_task(source, self.settings, self._left_out())
            plan = plan_files(self.settings, listing)
            if self.decisions is None:
                self._first_plan(plan)
                await self._announce_plan(source)
            assert self.decisions is not None
            todo = [
                item
                for item in plan.files
                if item.remote.path not in self.done
                and item.remote.path not in self.decisions.up_to_date
            ]
            digests: dict[str, str] = {}
            if self.settings.verify == "sha256" and todo:
                digests = await source.sha256_digests([item.remote.path for item in todo])
            self.observer.state_changed(self.name, TaskState.TRANSFERRING)
            try:
                await self._fetch_all(source, todo, digests)
            finally:
                self._write_entries(self._downloads_to_record())
        self.report.downloaded = [
            self._local(self.done[item.remote.path].item)
            for item in plan.files
            if item.remote.path in self.done
        ]

    def _left_out(self) -> Callable[[str, str], None] | None:
        """Files the filters leave out go to the observer, on the first try only."""
        if self.decisions is not None:
            return None
        return lambda remote_path, reason: self.observer.file_skipped(
            self.name, remote_path, reason
        )

    @property
    def destination(self) -> str:
        """The destination folder as the manifest records it (see destination_label)."""
        assert self.plan is not None
        if self.settings.destination_url is not None:
            return sink_url(self.settings.destination_url, self.plan.folder)
        return destination_label(self.plan.folder, self.store.path)

    def _local(self, item: PlannedFile) -> Path:
        assert self.plan is not None
        return self.plan.folder / item.relative

    def _first_plan(self, plan: Plan) -> None:
        """Skip what is already here, refuse conflicts (and, frozen, any drift) before fetching."""
        settings = self.settings
        self.plan = plan
        self.sink = self.sink_factory(plan.folder)
        manifest = self.store.load()
        record = pins = manifest.task(self.name)
        if record is not None and record.destination != self.destination:
            # Saved elsewhere before: those records say nothing about this folder
            # (though, with --frozen, their pins still hold).
            log.info(
                "%s: destination changed from %s; starting a new record",
                self.name,
                record.destination,
            )
            if not settings.frozen:
                self.store.forget_task(self.name)
            record = None
        if settings.frozen:
            problems = frozen_differences(self.name, pins, plan, self.store.path)
            if problems:
                raise FrozenError(problems)
        self.decisions = decide(settings, plan, record, self.sink, pins=pins)
        for item in plan.files:
            if item.remote.path in self.decisions.up_to_date:
                self.report.up_to_date.append(self._local(item))
                self.observer.file_skipped(self.name, item.remote.path, "up to date")
        if self.decisions.up_to_date:
            log.info(
                "%s: %d file(s) already up to date (unchanged on the server and on disk); "
                "skipping them (use --force to fetch again)",
                self.name,
                len(self.decisions.up_to_date),
            )
        for item in plan.files:
            entry = record.entries.get(item.remote.path) if record is not None else None
            if item.remote.path not in self.decisions.up_to_date and self._downloaded(item, entry):
                assert entry is not None and entry.source.sha256 is not None
                log.info("%s: %s was downloaded before; extracting it", self.name, item.relative)
                local = str(self._local(item))
                copied = Copied(item.remote, local, entry.source.sha256, item.remote.size, 0)
                fetched = _Fetched(item, copied, noted=True, kind_known=True)
                fetched.kind = self.sink.archive_kind(item.relative)
                self.done[item.remote.path] = fetched
        todo = [
            item
            for item in plan.files
            if item.remote.path not in self.decisions.up_to_date
            and item.remote.path not in self.done
        ]
        self.first_todo = todo  # announced by _announce_plan, after the free-space check

    async def _announce_plan(self, source: Source) -> None:
        """Exit 7 when the first try's downloads (and what its zips unpack to) cannot
        fit, before anything is written or announced; else announce the plan."""
        assert self.sink is not None
        todo = self.first_todo
        await check_free_space(
            self.name,
            self.sink,
            source,
            todo,
            max_extract_bytes=self.settings.max_extract_bytes,
            max_ratio=self.settings.max_compression_ratio,
        )
        self.observer.plan_ready(self.name, len(todo), sum(p.remote.size for p in todo))

    def safe_here(self) -> list[PlannedFile]:
        """The files fetched and recorded, or up to date: after_fetch may act on them."""
        if self.plan is None or self.decisions is None:
            return []
        up_to_date = self.decisions.up_to_date
        return [
            item
            for item in self.plan.files
            if item.remote.path in up_to_date
            or (item.remote.path in self.done and self.done[item.remote.path].recorded)
        ]

    def _downloaded(self, item: PlannedFile, entry: Entry | None) -> bool:
        """An archive an interrupted run downloaded in full but did not finish extracting."""
        if entry is None or entry.complete or entry.archive != item.relative:
            return False
        if entry.source.sha256 is None or self.settings.force:
            return False
        if (entry.source.size, entry.source.mtime) != (item.remote.size, item.remote.mtime):
            return False
        assert self.sink is not None
        held = self.sink.held(item.relative)
        return held is not None and (held.size, held.mtime) == (item.remote.size, item.remote.mtime)

    async def _fetch_all(
        self, source: Source, todo: list[PlannedFile], digests: dict[str, str]
    ) -> None:
        if not todo:
            return
        assert self.sink is not None
        # Several connections (settings.connections): big files in segments, the
        # rest spread over them (engine/segments.py).
        self.segments = SegmentedFetches(self.settings, self.connector, source, self.observer)
        parallel = min(files_in_flight(source, todo), len(todo))
        requests_per_file = max(4, requests_budget(source) // parallel)
        queue: asyncio.Queue[PlannedFile] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker(index: int) -> None:
            while not queue.empty():
                item = queue.get_nowait()
                lane = await self.segments.lane(index)
                await self._fetch_one(lane, item, requests_per_file, digests)
                if time.monotonic() - self.last_record >= RECORD_INTERVAL:
                    entries = self._downloads_to_record()
                    await asyncio.to_thread(self._write_entries, entries)

        workers = [asyncio.create_task(worker(index)) for index in range(parallel)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.segments.aclose()
            await self.sink.finish()

    def _expected_sha256(self, item: PlannedFile, digests: dict[str, str]) -> str | None:
        assert self.decisions is not None
        pinned = self.decisions.pinned_sha256.get(item.remote.path)
        return pinned or digests.get(item.remote.path)

    async def _fetch_one(
        self,
        source: Source,
        item: PlannedFile,
        requests_in_flight: int,
        digests: dict[str, str],
    ) -> None:
        assert self.sink is not None and self.decisions is not None
        sink = self.sink
        if self.segments.takes(item.remote):
            pinned = item.remote.path in self.decisions.pinned_sha256 and self.settings.frozen
            segmented = await self.segments.fetch(
                sink,
                item.relative,
                item.remote,
                expected_sha256=self._expected_sha256(item, digests),
                pinned_by=self.store.path if pinned else None,
                confirm_unchanged=still_as_listed(self.settings, source, item.remote),
            )
            if segmented is not None:
                self.done[item.remote.path] = _Fetched(item, segmented)
                self.report.bytes_transferred += segmented.bytes_transferred
                return
        # One open serves the archive probe and the download (round trips add
        # up on a far link); nothing waits for the close.
        reader = await source.open(item.remote)
        overlap: OverlappedExtraction | None = None
        try:
            # The writer first: it creates the destination folder, which the
            # extraction's staging folder then goes into.
            writer = await sink.open_part(item.relative, item.remote)
            overlapping = self.settings.extract and item.remote.size >= OVERLAP_MIN_BYTES
            if overlapping and writer.offset == 0:
                try:
                    overlap = await start_extraction(
                        reader,
                        sink,
                        item.relative,
                        overwrite=self.settings.overwrite,
                        owned=self.decisions.owned,
                        limits=self.limits,
                        before_install=self._before_install(item),
                    )
                except BaseException:
                    await writer.close()
                    raise
            download = asyncio.ensure_future(
                copy_file(
                    self.name,
                    source,
                    reader,
                    writer,
                    self.observer,
                    requests_in_flight=requests_in_flight,
                    expected_sha256=self._expected_sha256(item, digests),
                    tee=overlap.tee if overlap else None,
                    confirm_unchanged=still_as_listed(self.settings, source, item.remote),
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
                copied = await download
            except DigestMismatch as exc:
                if self.settings.frozen and item.remote.path in self.decisions.pinned_sha256:
                    raise FrozenError(
                        f"{self.name}: {item.remote.path} has changed since the manifest "
                        f"{self.store.path} pinned it (sha256 {exc.received}, pinned "
                        f"{exc.expected}); nothing was written"
                    ) from None
                raise TransientError(str(exc)) from None
            except BaseException as exc:
                if not download.done():
                    download.cancel()
                    with contextlib.suppress(BaseException):
                        await download
                if overlap is not None:
                    await overlap.cancel(str(exc))
                raise
        finally:
            reader.close_later()
        fetched = _Fetched(item, copied)
        self.done[item.remote.path] = fetched
        self.report.bytes_transferred += copied.bytes_transferred
        if overlap is not None:
            fetched.early = await overlap.finish()

    def _downloads_to_record(self) -> list[Entry]:
        """Entries for the files fetched since the last record (on the event loop's thread).

        Plain files are complete; archives get an incomplete entry until their
        results are recorded (see extract()).
        """
        self.last_record = time.monotonic()
        entries = []
        for fetched in self.done.values():
            if fetched.recorded or fetched.early is not None:
                continue
            if self._archive_kind(fetched) is not None:
                if fetched.noted:
                    continue
                fetched.noted = True
                # Downloaded, not extracted yet: the archive is dataferry's own
                # (a later run resumes it) until its results are recorded.
                entries.append(
                    Entry(
                        SourceRecord(
                            fetched.item.remote.path,
                            fetched.item.remote.size,
                            fetched.item.remote.mtime,
                            fetched.copied.sha256,
                        ),
                        (),
                        archive=fetched.item.relative,
                        complete=False,
                    )
                )
                continue
            entries.append(make_entry(fetched.item, fetched.copied.sha256, None, kept=True))
            fetched.recorded = True
        return entries

    def _write_entries(self, entries: list[Entry]) -> None:
        if entries and not self.settings.frozen:
            self.store.update(self.name, self.destination, upsert=entries)

    def _archive_kind(self, fetched: _Fetched) -> ArchiveKind | None:
        assert self.sink is not None
        if not fetched.kind_known:
            if self.settings.extract and may_be_archive(fetched.copied.head):
                fetched.kind = self.sink.archive_kind(fetched.item.relative)
            fetched.kind_known = True
            fetched.kind_known = True
        return fetched.kind

    def extract(self) -> None:
        """Extract each downloaded archive beside it, then record the results."""
        assert self.sink is not None and self.plan is not None and self.decisions is not None
        settings, sink = self.settings, self.sink
        for fetched in (self.done[path] for path in sorted(self.done)):
            item = fetched.item
            path = self._local(item)
            results = fetched.early
            if results is not None:
                self.report.extracted_while_downloading.append(path)
            else:
                kind = self._archive_kind(fetched)
                if kind is None:
                    continue  # a plain file: recorded with the downloads
                self.observer.state_changed(self.name, TaskState.EXTRACTING)
                log.info(
                    "extracting %s (%s) into %s",
                    shown(sink.describe(item.relative)),
                    kind.value,
                    shown(sink.describe(posixpath.dirname(item.relative))),
                )
                results = sink.extract_file(
                    item.relative,
                    kind,
                    overwrite=settings.overwrite,
                    owned=self.decisions.owned,
                    limits=self.limits,
                    before_install=self._before_install(item),
                )
            folder = self.plan.folder
            self.report.extracted.extend(folder / result.path for result in results)
            kept = settings.keep_zip_tar_file
            if not kept:
                sink.remove(item.relative)
                self.report.removed_archives.append(path)
                log.debug("removed archive %s", path)
            entry = make_entry(item, fetched.copied.sha256, results, kept=kept)
            if settings.frozen:
                self._check_frozen_results(entry)
            else:
                self.store.update(self.name, self.destination, upsert=[entry])
            fetched.recorded = True

    def _before_install(self, item: PlannedFile) -> Callable[[list[Extracted]], None]:
        """Right before an archive's results become visible (in the extraction's thread).

        Records them as an incomplete entry, so that a crash while they move
        into place still leaves them known as dataferry's own; with --frozen,
        refuses results that differ from the pins instead.
        """

        def hear(results: list[Extracted]) -> None:
            assert self.plan is not None
            kept = self.settings.keep_zip_tar_file
            entry = make_entry(item, None, results, kept=kept, complete=False)
            if self.settings.frozen:
                self._check_frozen_results(entry)
            else:
                self.store.update(self.name, self.destination, upsert=[entry])

        return hear

    def _check_frozen_results(self, entry: Entry) -> None:
        assert self.decisions is not None
        record = self.decisions.record
        pinned = record.entries.get(entry.source.path) if record is not None else None
        if pinned is None:
            return
        # The extracted files; the archive itself is checked as it downloads.
        expected = {r.path: r.sha256 for r in pinned.results if r.path != pinned.archive}
        got = {r.path: r.sha256 for r in entry.results if r.path != entry.archive}
        if expected != got:
            raise FrozenError(
                f"{self.name}: extracting {entry.source.path} gave other files than the "
                f"manifest {self.store.path} pins"
            )


async def run_task(
    settings: TaskSettings,
    connection: ConnectionSettings | SourceConnector,
    observer: TaskObserver | None = None,
    *,
    sink_factory: SinkFactory | None = None,
    store: ManifestStore | None = None,
    hold_lock: bool = True,
) -> TaskReport:
    """Fetch and extract one task. Transient failures are retried with backoff.

    ``connection`` may be a connector whose first connection is already under
    way (the command line starts it early); the caller closes it.
    ``sink_factory`` makes the sink for a destination folder (tests pass fakes);
    by default the one file_save_path names (sinks.sink_factory_for: s3:// or a folder).
    ``store`` and ``hold_lock=False`` are for a cluster's worker (cluster/): it
    records into the store given, and the coordinator holds the lock.
    """
    if sink_factory is None:
        sink_factory = sink_factory_for(settings.destination_url)
    if isinstance(connection, ConnectionSettings):
        from ..sources.ssh import SSHConnector

        connector = SSHConnector(connection)
        try:
            return await run_task(
                settings,
                connector,
                observer,
                sink_factory=sink_factory,
                store=store,
                hold_lock=hold_lock,
            )
        finally:
            await connector.aclose()
    observer = observer or TaskObserver()
    run = _TaskRun(settings, connection, observer, sink_factory, store)
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
        lock = _locked if hold_lock else _lock_held_elsewhere
        async with lock(sink_factory(settings.file_save_path), settings.name):
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
            if settings.after_fetch != "keep" and not settings.frozen:
                await act_after_fetch(settings, connection, run.safe_here())
    except Exception as exc:
        observer.state_changed(settings.name, TaskState.FAILED)
        observer.error(settings.name, str(exc))
        raise
    run.report.seconds = time.monotonic() - started
    run.report.folder = run.plan.folder if run.plan is not None else None
    observer.state_changed(settings.name, TaskState.DONE)
    observer.task_finished(
        settings.name, len(run.report.files), run.report.bytes_transferred, run.report.seconds
    )
    return run.report


@contextlib.asynccontextmanager
async def _locked(sink: Sink, task: str) -> AsyncIterator[None]:
    """Hold the destination's lock for the run; waiting for it happens off the event loop."""
    lock = sink.lock(task)
    await asyncio.to_thread(lock.__enter__)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@contextlib.asynccontextmanager
async def _lock_held_elsewhere(sink: Sink, task: str) -> AsyncIterator[None]:
    """A cluster's worker: its coordinator holds the destination's lock."""
    yield
