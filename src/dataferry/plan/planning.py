"""From a listing to a plan: each remote file's place in the destination.

A task's results live in one destination folder (the sink's root): for a
folder task, file_save_path itself; for a file task, the folder that holds
file_save_path (archives are extracted beside it). Each planned file has a
path relative to that folder.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError, DestinationError, RemotePathError
from .._settings import TaskSettings
from ..sources import Listing, RemoteFile, Source
from .filters import FilterRules, parse_time_bound, relative_path
from .names import shown, unsafe_name_reason

log = logging.getLogger("dataferry.plan")

# Many small files are round-trip bound: keep many in flight on one connection.
# Big files share the connection's request budget, so fewer at once.
FILES_IN_FLIGHT = 16
SMALL_FILES_IN_FLIGHT = 64
SMALL_FILE_BYTES = 1024 * 1024
# Each small file costs two round trips (open, read): on a far link, more at
# once means fewer waves (docs/benchmarks.md: small files in flight).
FAR_SMALL_FILES_IN_FLIGHT = 128
FAR_ROUND_TRIP = 0.005  # seconds


@dataclass(frozen=True)
class PlannedFile:
    remote: RemoteFile
    relative: str  # POSIX path under the destination folder


@dataclass(frozen=True)
class TaskLayout:
    """Where a task's results go: the destination folder, and for a file task its name."""

    folder: Path
    file_name: str | None  # None: the remote path is a folder (or not known yet)


@dataclass(frozen=True)
class Plan:
    listing: Listing
    files: tuple[PlannedFile, ...]
    folder: Path


def layout_of(settings: TaskSettings, listing: Listing) -> TaskLayout:
    """The destination folder of a task, given what the remote path turned out to be."""
    save = settings.file_save_path
    if listing.is_folder:
        if save.exists() and not save.is_dir():
            raise DestinationError(
                f"{settings.name}: remote {listing.path} is a folder but file_save_path "
                f"{save} is a file"
            )
        return TaskLayout(save, None)
    if settings.save_path_is_folder or save.is_dir():
        return TaskLayout(save, listing.files[0].name)
    return TaskLayout(save.parent, save.name)


def plan_files(settings: TaskSettings, listing: Listing) -> Plan:
    """Map each remote file to its place; refuse two files that would share one name."""
    layout = layout_of(settings, listing)
    files: tuple[PlannedFile, ...]
    if layout.file_name is not None:
        remote = listing.files[0]
        if layout.file_name == remote.name and not _acceptable(settings.name, remote):
            raise RemotePathError(
                f"{settings.name}: the server names {shown(listing.path)} "
                f"{shown(repr(remote.name))}, which cannot be a local file name; "
                "give file_save_path a file name"
            )
        files = (PlannedFile(remote, layout.file_name),)
    else:
        if not listing.files:
            log.warning(
                "%s: no files in %s match %s",
                settings.name,
                listing.path,
                ", ".join(settings.include),
            )
        # A tree keeps its shape: the path below remote_file_path, each part checked.
        planned = (
            PlannedFile(remote, relative_path(listing.path, remote.path))
            for remote in listing.files
        )
        files = tuple(item for item in planned if _acceptable_path(settings.name, item.relative))
    _refuse_shared_names(settings.name, files)
    return Plan(listing, files, layout.folder)


def _acceptable(task: str, remote: RemoteFile) -> bool:
    reason = unsafe_name_reason(remote.name)
    if reason is None:
        return True
    log.warning("%s: skipping %s from the server: %s", task, shown(repr(remote.name)), reason)
    return False


def _acceptable_path(task: str, relative: str) -> bool:
    for part in relative.split("/"):
        reason = unsafe_name_reason(part)
        if reason is not None:
            log.warning("%s: skipping %s from the server: %s", task, shown(repr(relative)), reason)
            return False
    return True


def rules_of(settings: TaskSettings, now: float | None = None) -> FilterRules:
    """The task's filter rules, ages turned into moments as of now (each listing's own)."""
    now = time.time() if now is None else now
    newer = None if settings.newer_than is None else parse_time_bound(settings.newer_than, now)
    if settings.max_age is not None:
        newer = max(newer or 0.0, now - settings.max_age)
    return FilterRules(
        include=settings.include,
        exclude=settings.exclude,
        recursive=settings.recursive,
        min_size=settings.min_size,
        max_size=settings.max_size,
        newer_than=newer,
        not_after=None if settings.min_age is None else now - settings.min_age,
        ready_marker=settings.ready_marker,
    )


def _refuse_shared_names(task: str, files: tuple[PlannedFile, ...]) -> None:
    """Two remote files mapping to one local name would share one partial file."""
    seen: dict[str, str] = {}
    for item in files:
        key = item.relative
        other = seen.get(key)
        if other is not None:
            raise ConfigError(
                f"{task}: remote files {other} and {item.remote.path} would both be saved as "
                f"{key}; narrow 'include' or fetch them in separate tasks"
            )
        seen[key] = item.remote.path


def files_in_flight(source: Source, todo: list[PlannedFile]) -> int:
    """How many files to fetch at once: more when they are small, more still when far."""
    average = sum(item.remote.size for item in todo) / len(todo)
    if average >= SMALL_FILE_BYTES:
        return FILES_IN_FLIGHT
    if source.round_trip < FAR_ROUND_TRIP:
        return SMALL_FILES_IN_FLIGHT
    # Each file in flight holds a local file descriptor (and a remote handle).
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = FAR_SMALL_FILES_IN_FLIGHT
    if descriptors != resource.RLIM_INFINITY:
        limit = min(limit, max(SMALL_FILES_IN_FLIGHT, descriptors // 4))
    return min(limit, source.max_open_handles or limit)
