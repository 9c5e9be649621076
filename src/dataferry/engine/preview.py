"""``--dry-run``: the plan of one task, with nothing written.

Lists through the task's filters, maps to destination paths and decides
against the manifest exactly as a run would (so a clash a run would refuse is
refused here too, exit 7), then stops: no lock, no folder, no manifest write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._exceptions import TransferError, TransientError
from .._settings import TaskSettings, default_manifest_path
from ..manifest import ManifestStore, destination_label
from ..observe import TaskObserver
from ..plan import PlannedFile, plan_files
from ..plan.listing import list_task
from ..sinks.local import LocalSink
from ..sources import SourceConnector
from .decisions import decide


@dataclass
class Preview:
    task: str
    folder: Path
    fetch: list[PlannedFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (remote path, reason)

    @property
    def total_bytes(self) -> int:
        return sum(item.remote.size for item in self.fetch)


async def preview_task(
    settings: TaskSettings, connector: SourceConnector, observer: TaskObserver | None = None
) -> Preview:
    """What a run of this task would fetch and skip (and why); writes nothing."""
    observer = observer or TaskObserver()
    skipped: list[tuple[str, str]] = []

    def left_out(remote_path: str, reason: str) -> None:
        skipped.append((remote_path, reason))
        observer.file_skipped(settings.name, remote_path, reason)

    try:
        async with connector.session() as source:
            source.request_timeout = settings.request_timeout
            listing = await list_task(source, settings, left_out)
    except TransientError as exc:
        raise TransferError(f"{settings.name}: {exc}") from None
    plan = plan_files(settings, listing)
    store = ManifestStore(settings.manifest or default_manifest_path(None))
    record = store.load().task(settings.name)
    if record is not None and record.destination != destination_label(plan.folder, store.path):
        record = None  # saved elsewhere before: says nothing about this folder
    decisions = decide(settings, plan, record, LocalSink(plan.folder), pins=record)
    preview = Preview(settings.name, plan.folder, skipped=skipped)
    for item in plan.files:
        if item.remote.path in decisions.up_to_date:
            left_out(item.remote.path, "up to date")
        else:
            preview.fetch.append(item)
    return preview
