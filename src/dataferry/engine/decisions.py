"""What to do with each planned file, given the manifest and what the destination holds.

Pure decisions (no transfers): which files are up to date and skipped, which
existing files are dataferry's own (recorded and unchanged since, so a re-run
may replace them even with overwrite false), which clash with files dataferry
did not write or that changed since, and, with --frozen, how the remote
differs from what the manifest pins.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .._exceptions import OverwriteConflictError
from .._settings import TaskSettings
from ..manifest import Entry, ResultRecord, SourceRecord, TaskRecord
from ..plan import Plan, PlannedFile
from ..sinks import Extracted, Sink

log = logging.getLogger("dataferry.engine")

_SHOWN = 5


@dataclass
class Decisions:
    record: TaskRecord | None
    up_to_date: set[str] = field(default_factory=set)  # remote paths
    owned: frozenset[str] = frozenset()  # relative paths dataferry may replace
    pinned_sha256: dict[str, str] = field(default_factory=dict)  # remote path -> sha256


def _matches(sink: Sink, result: ResultRecord) -> bool:
    held = sink.held(result.path)
    return held is not None and (held.size, held.mtime) == (result.size, result.mtime)


def _intact(sink: Sink, result: ResultRecord, rehash: bool) -> bool:
    if not _matches(sink, result):
        return False
    if not rehash:
        return True
    digest = hashlib.sha256()
    with sink.open_result(result.path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == result.sha256


def _up_to_date(settings: TaskSettings, item: PlannedFile, entry: Entry | None, sink: Sink) -> bool:
    if entry is None or not entry.complete:
        return False
    source = entry.source
    if (source.size, source.mtime) != (item.remote.size, item.remote.mtime):
        return False
    if settings.keep_zip_tar_file and entry.archive is not None and not entry.kept_archive:
        return False
    if entry.archive is None and entry.result(item.relative) is None:
        return False  # saved under another name before
    rehash = settings.verify == "sha256"
    return all(_intact(sink, result, rehash) for result in entry.results)


def decide(
    settings: TaskSettings,
    plan: Plan,
    record: TaskRecord | None,
    sink: Sink,
    *,
    pins: TaskRecord | None = None,
) -> Decisions:
    """Skips and ownership; raises OverwriteConflictError before anything is transferred.

    record: what this task recorded for this destination. pins: the task's
    record wherever it saved (--frozen holds the remote to its digests).
    """
    decisions = Decisions(pins if settings.frozen else None)
    if settings.frozen and pins is not None:
        for entry in pins.entries.values():
            if entry.source.sha256 is not None:
                decisions.pinned_sha256[entry.source.path] = entry.source.sha256
    owned: set[str] = set()
    changed: set[str] = set()
    if record is not None:
        for entry in record.entries.values():
            if entry.archive is not None:
                held = sink.held(entry.archive)
                if held is not None and (held.size, held.mtime) == (
                    entry.source.size,
                    entry.source.mtime,
                ):
                    owned.add(entry.archive)  # downloaded by dataferry, extraction pending
            for result in entry.results:
                if _matches(sink, result):
                    owned.add(result.path)
                elif sink.held(result.path) is not None:
                    changed.add(result.path)
    if not settings.force and record is not None:
        for item in plan.files:
            if _up_to_date(settings, item, record.entries.get(item.remote.path), sink):
                decisions.up_to_date.add(item.remote.path)
    todo = [item for item in plan.files if item.remote.path not in decisions.up_to_date]
    clashes: list[str] = []
    for item in todo:
        recorded_entry = record.entries.get(item.remote.path) if record is not None else None
        for result in recorded_entry.results if recorded_entry is not None else ():
            if result.path in changed and result.path != item.relative:
                # An archive's output, edited since: fetching again would replace it.
                clashes.append(f"{sink.describe(result.path)} (changed since dataferry wrote it)")
        if not sink.exists(item.relative) or item.relative in owned:
            continue
        recorded = item.relative in changed
        clashes.append(
            f"{sink.describe(item.relative)} (changed since dataferry wrote it)"
            if recorded
            else sink.describe(item.relative)
        )
    decisions.owned = frozenset(owned)
    if clashes and not settings.overwrite:
        shown = ", ".join(clashes[:_SHOWN]) + (
            f" and {len(clashes) - _SHOWN} more" if len(clashes) > _SHOWN else ""
        )
        raise OverwriteConflictError(
            f"{settings.name}: overwrite is false and {len(clashes)} file(s) already exist that "
            f"dataferry did not write or that changed since: {shown} (set overwrite to true, "
            "or move them away)"
        )
    return decisions


def frozen_differences(
    task: str, record: TaskRecord | None, plan: Plan, manifest: Path
) -> str | None:
    """How the remote differs from the pinned record, in one line; None when it does not."""
    if record is None:
        return (
            f"{task}: --frozen, but {manifest} has no record of this task; run it once "
            "without --frozen to pin it"
        )
    problems: list[str] = []
    listed = {item.remote.path: item for item in plan.files}
    for path, entry in record.entries.items():
        item = listed.get(path)
        if item is None:
            problems.append(f"{path} is gone")
        elif (item.remote.size, item.remote.mtime) != (entry.source.size, entry.source.mtime):
            problems.append(
                f"{path} changed (size {entry.source.size} -> {item.remote.size}, "
                f"mtime {entry.source.mtime} -> {item.remote.mtime})"
            )
    for path in sorted(set(listed) - set(record.entries)):
        problems.append(f"{path} is new")
    if not problems:
        return None
    shown = "; ".join(problems[:_SHOWN]) + (
        f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    )
    return f"{task}: the remote differs from what {manifest} pins: {shown}; nothing was written"


def make_entry(
    item: PlannedFile,
    sha256: str | None,
    extracted: list[Extracted] | None,
    *,
    kept: bool,
    complete: bool = True,
) -> Entry:
    """The manifest entry of a fetched file (and, for an archive, what it became).

    sha256: of the bytes received; None in an intent record written while an
    archive still downloads (its results are known, the whole file not yet).
    """
    remote = item.remote
    source = SourceRecord(remote.path, remote.size, remote.mtime, sha256)
    results = []
    if extracted is not None:
        results = [ResultRecord(x.path, x.size, x.mtime, x.sha256) for x in extracted]
    if (extracted is None or kept) and sha256 is not None:
        results.append(ResultRecord(item.relative, remote.size, remote.mtime, sha256))
    if extracted is None:
        return Entry(source, tuple(results), complete=complete)
    return Entry(
        source,
        tuple(results),
        archive=item.relative,
        kept_archive=kept and sha256 is not None,
        complete=complete,
    )
