"""The coordinator: lock, plan once, shard by bytes, submit to Dask, record the results.

Runs in the ``dataferry`` process. For each task it takes the destination's
lock and keeps it until every shard is recorded, plans with the engine's own
planning (the listing, decisions against the manifest: skips, ownership,
conflicts and --frozen refused before anything moves), submits one Dask task
per shard and records each shard's manifest entries as it completes, with
one progress line per shard. A shard whose worker is lost is run again by
Dask on another worker (the scheduler reschedules the tasks of a worker that
disappears); the second run resumes the partial files the first left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._connection import ConnectionSettings
from .._exceptions import (
    AuthenticationError,
    ClusterError,
    ConfigError,
    DataferryError,
    TransferError,
    TransientError,
)
from .._settings import TaskSettings
from ..engine import TaskReport
from ..engine.run import _TaskRun
from ..manifest import Entry, Manifest, ResultRecord, SourceRecord, TaskRecord, dumps
from ..observe import TaskObserver, TaskState
from ..observe.progress import human_bytes
from ..plan import PlannedFile, plan_files
from ..sinks import Sink, sink_factory_for
from .command import SCHEDULER_ENV
from .shard import Shard, ShardResult, run_shard, warm_up
from .sharding import shard_by_bytes

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("dataferry.cluster")

CONNECT_TIMEOUT = "10s"
CONNECT_TIMEOUT_ENV = "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"
# Shards per worker: a few, so a slow or lost worker holds up less of the task.
SHARDS_PER_WORKER = 2
_PLACEHOLDER_SHA256 = "0" * 64


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the scheduler at scheduler, else of a local cluster of workers processes."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            "--scheduler and --workers need Dask, which is not installed: "
            "pip install 'dataferry[dask]'"
        ) from None
    # Dask has no type hints: its calls go through Any.
    dask: Any = distributed
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        try:
            # Dask's own setting wins when given (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT).
            given = os.environ.get(CONNECT_TIMEOUT_ENV)
            options = {} if given else {"timeout": CONNECT_TIMEOUT}
            client = dask.Client(scheduler, **options)
        except ValueError as exc:
            raise ConfigError(f"--scheduler {scheduler}: not a scheduler address ({exc})") from None
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler}: {_reason(exc)}"
            ) from None
        with client:
            yield client
        return
    cluster = dask.LocalCluster(
        n_workers=workers or 1,
        threads_per_worker=1,
        processes=True,
        # Loopback only, and a free port: the scheduler's HTTP server (health,
        # metrics) starts even without a dashboard and would take 8787 on every
        # address, or warn over the display when another cluster holds it.
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    )
    with cluster, dask.Client(cluster) as client:
        yield client


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.rstrip(".")


def _worker_count(client: Client) -> int:
    workers = client.scheduler_info().get("workers", {})
    return max(1, len(workers))


@dataclass
class _Planned:
    run: _TaskRun
    todo: list[PlannedFile]


async def _plan(settings: TaskSettings, connection: ConnectionSettings) -> _Planned:
    """The engine's own first plan (listing, decisions), without fetching anything."""
    from ..sources.ssh import SSHConnector

    connector = SSHConnector(connection)
    try:
        run = _TaskRun(settings, connector, TaskObserver(), _sink_factory(settings))
        async with connector.session() as source:
            source.request_timeout = settings.request_timeout
            listing = await source.find(settings.remote_file_path, settings.include)
        plan = plan_files(settings, listing)
        run._first_plan(plan)
    except TransientError as exc:
        raise TransferError(f"{settings.name}: planning failed: {exc}") from None
    finally:
        await connector.aclose()
    assert run.decisions is not None
    todo = [item for item in plan.files if item.remote.path not in run.decisions.up_to_date]
    return _Planned(run, todo)


def _shard_record(planned: _Planned, paths: list[str]) -> str:
    """The manifest a shard plans with: the task's entries for its files, as text.

    A file with no entry gets an incomplete one naming its final path with the
    remote's size and mtime: the coordinator saw nothing there (or only what
    dataferry owns) when it planned, under the lock, so a file that appears
    there with exactly those is this run's own, committed by a worker that was
    then lost; the shard's re-run may replace it rather than call it a conflict.
    """
    run = planned.run
    manifest = run.store.load()
    record = manifest.task(run.name)
    known = record.entries if record is not None and record.destination == run.destination else {}
    items = {item.remote.path: item for item in planned.todo}
    entries: dict[str, Entry] = {}
    for path in paths:
        if path in known:
            entries[path] = known[path]
            continue
        item = items[path]
        remote = item.remote
        result = ResultRecord(item.relative, remote.size, remote.mtime, _PLACEHOLDER_SHA256)
        entries[path] = Entry(
            SourceRecord(remote.path, remote.size, remote.mtime), (result,), complete=False
        )
    snapshot = Manifest({run.name: TaskRecord(run.destination, entries)})
    return dumps(snapshot)


def _sink_factory(settings: TaskSettings) -> Callable[[Path], Sink]:
    """The destination's sink (a folder every worker sees, or an object store)."""
    return sink_factory_for(settings.destination_url)


def _absolute(settings: TaskSettings) -> TaskSettings:
    """Paths as every worker resolves them the same way (their working folders differ)."""
    update: dict[str, Any] = {}
    if settings.destination_url is None:  # an s3:// URL is the same everywhere
        update["file_save_path"] = settings.file_save_path.absolute()
    if settings.manifest is not None:
        update["manifest"] = settings.manifest.absolute()
    return settings.model_copy(update=update)


class _TaskOnCluster:
    """One task under way: locked, planned, its shards submitted."""

    def __init__(
        self,
        client: Client,
        settings: TaskSettings,
        connection: ConnectionSettings,
        observer: TaskObserver | None = None,
    ) -> None:
        # Hears the task at shard granularity: its plan, then each shard's files as
        # the shard completes (workers report no bytes while they run).
        self.observer = observer or TaskObserver()
        self.shard_paths: list[tuple[str, ...]] = []
        self.sizes: dict[str, int] = {}
        settings = _absolute(settings)
        if settings.manifest is None:
            from .._settings import default_manifest_path

            manifest = default_manifest_path(None).absolute()
            settings = settings.model_copy(update={"manifest": manifest})
        self.settings = settings
        self.started = time.monotonic()
        self.report = TaskReport(settings.name)
        self.futures: list[Any] = []
        self.shards = 0
        self.error: DataferryError | None = None
        self._lock = _sink_factory(settings)(settings.file_save_path).lock(settings.name)
        self._lock.__enter__()
        try:
            self._submit(client, connection)
        except BaseException:
            self.close()
            raise

    def _submit(self, client: Client, connection: ConnectionSettings) -> None:
        settings = self.settings
        assert settings.manifest is not None
        self.planned = planned = asyncio.run(_plan(settings, connection))
        run = planned.run
        self.report.up_to_date = [
            run._local(item)
            for item in (run.plan.files if run.plan else [])
            if run.decisions is not None and item.remote.path in run.decisions.up_to_date
        ]
        sizes = [(item.remote.path, item.remote.size) for item in planned.todo]
        self.sizes = dict(sizes)
        self.report.folder = run.plan.folder if run.plan is not None else None
        workers = _worker_count(client)
        shards = shard_by_bytes(sizes, workers * SHARDS_PER_WORKER) if sizes else []
        self.shards = len(shards)
        self.shard_paths = [tuple(paths) for paths in shards]
        self.observer.task_started(settings.name)
        self.observer.plan_ready(settings.name, len(planned.todo), sum(self.sizes.values()))
        self.observer.state_changed(settings.name, TaskState.TRANSFERRING)
        submit: Any = client.submit
        token = secrets.token_hex(4)  # a fresh key per run: a long-lived scheduler caches by key
        for index, paths in enumerate(shards):
            shard = Shard(
                index,
                len(shards),
                settings,
                connection,
                tuple(paths),
                settings.manifest,
                _shard_record(planned, paths),
            )
            key = f"dataferry-{settings.name}-{index}-{token}"
            self.futures.append(submit(run_shard, shard, key=key, pure=False, retries=0))
        log.info(
            "%s: %d file(s), %s in %d shard(s) over %d worker(s)",
            settings.name,
            len(planned.todo),
            human_bytes(sum(size for _, size in sizes)),
            len(shards),
            workers,
        )

    def record(self, future: Any) -> None:
        """A shard finished: record its entries, merge its report, say so."""
        settings, run = self.settings, self.planned.run
        result = _result(settings, future)
        if result.entries and not settings.frozen:
            run.store.update(settings.name, run.destination, upsert=result.entries)
        _merge(self.report, result.report)
        for path in self.shard_paths[result.index]:
            self.observer.bytes_received(settings.name, path, self.sizes[path])
            self.observer.file_finished(settings.name, path, "", self.sizes[path])
        log.info(
            "%s: shard %d/%d done on %s: %d file(s), %s",
            settings.name,
            result.index + 1,
            self.shards,
            result.worker,
            len(result.report.files),
            human_bytes(result.report.bytes_transferred),
        )

    def close(self) -> None:
        for future in self.futures:
            future.cancel()  # a no-op for the finished ones
        self._lock.__exit__(None, None, None)


def run_tasks_on_cluster(
    client: Client,
    tasks: list[TaskSettings],
    connection: ConnectionSettings,
    observer: TaskObserver | None = None,
) -> list[TaskReport | DataferryError]:
    """Every task across the cluster's workers, each with its report (or its error).

    Tasks with different destinations run at once (their shards share the
    workers); tasks writing to the same destination run one after the other.
    """
    outcomes: dict[int, TaskReport | DataferryError] = {}
    # The workers import the engine and asyncssh (~1 s) while the coordinator plans.
    run_on_workers: Any = client.run
    run_on_workers(warm_up, wait=False)
    for wave in _waves(tasks):
        _run_wave(client, [(index, tasks[index]) for index in wave], connection, outcomes, observer)
    return [outcomes[index] for index in range(len(tasks))]


def _waves(tasks: list[TaskSettings]) -> list[list[int]]:
    """Task indexes in groups of distinct destinations, each task after any earlier one
    with its destination."""
    waves: list[list[int]] = []
    last_wave: dict[str, int] = {}
    for index, settings in enumerate(tasks):
        key = settings.destination_url or os.path.abspath(settings.file_save_path)
        wave = last_wave.get(key, -1) + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(index)
        last_wave[key] = wave
    return waves


def _run_wave(
    client: Client,
    wave: list[tuple[int, TaskSettings]],
    connection: ConnectionSettings,
    outcomes: dict[int, TaskReport | DataferryError],
    observer: TaskObserver | None = None,
) -> None:
    import distributed

    as_completed: Any = distributed.as_completed
    running: dict[int, _TaskOnCluster] = {}
    try:
        for index, settings in wave:
            try:
                running[index] = _TaskOnCluster(client, settings, connection, observer)
            except DataferryError as exc:
                outcomes[index] = exc
        owner = {id(f): index for index, task in running.items() for f in task.futures}
        futures = [future for task in running.values() for future in task.futures]
        for future in as_completed(futures):
            task = running[owner[id(future)]]
            if task.error is not None:
                continue
            try:
                task.record(future)
            except DataferryError as exc:
                task.error = exc
                for other in task.futures:
                    other.cancel()
        for index, task in running.items():
            task.report.seconds = time.monotonic() - task.started
            outcomes[index] = task.error or task.report
            if task.error is None:
                task.observer.state_changed(task.settings.name, TaskState.DONE)
                task.observer.task_finished(
                    task.settings.name,
                    len(task.report.files),
                    task.report.bytes_transferred,
                    task.report.seconds,
                )
            else:
                task.observer.state_changed(task.settings.name, TaskState.FAILED)
    finally:
        for task in running.values():
            task.close()


def _result(settings: TaskSettings, future: Any) -> ShardResult:
    from distributed import KilledWorker

    try:
        result = future.result()
    except KilledWorker:
        raise TransferError(
            f"{settings.name}: a shard lost its worker too many times; partial files are "
            "kept and resume on the next run"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"{settings.name}: lost the Dask scheduler: {_reason(exc)}") from None
    except AuthenticationError as exc:
        if settings.destination_url is None or "S3" not in str(exc):
            raise
        # The coordinator reached the bucket: the worker's own environment lacks them.
        raise AuthenticationError(
            f"{exc} (in a Dask worker's environment: every worker needs the AWS_* "
            "variables; docs/scale.md)"
        ) from None
    assert isinstance(result, ShardResult)
    return result


def _merge(report: TaskReport, shard: TaskReport) -> None:
    report.downloaded.extend(shard.downloaded)
    report.extracted.extend(shard.extracted)
    report.removed_archives.extend(shard.removed_archives)
    report.extracted_while_downloading.extend(shard.extracted_while_downloading)
    report.bytes_transferred += shard.bytes_transferred
    report.tries = max(report.tries, shard.tries)


def scheduler_address(given: str | None) -> str | None:
    """--scheduler, else DASK_SCHEDULER_ADDRESS."""
    return given or os.environ.get(SCHEDULER_ENV) or None
