"""What a manifest holds: per task, each remote file fetched and the local files it produced.

The classes are frozen and check their own values, so a value that could not be
written and read back (a negative size, a result path with ``..``, a control
character in a name) is refused when it is built, with :class:`ValueError`.
:mod:`dataferry.manifest.format` turns the same checks into one-line
:class:`~dataferry._exceptions.ConfigError` messages naming the field.

Paths:

* ``SourceRecord.path`` is the remote path (relative ones are relative to the login's home).
* ``ResultRecord.path`` and ``Entry.archive`` are POSIX paths relative to the
  task's destination folder, in canonical form: no empty, ``.`` or ``..``
  component, no leading or trailing ``/``.
* No path or name may hold a control character (``U+0000``-``U+001F``,
  ``U+007F``-``U+009F``).  Undecodable file-name bytes (lone surrogates from
  :func:`os.fsdecode`) are allowed: the JSON format escapes them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SHA256 = re.compile("[0-9a-f]{64}")


def control_character_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (it holds a control character), or None."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"control character U+{ord(found.group()):04X} not allowed"


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe canonical relative POSIX path, or None if it is."""
    if not path:
        return "empty path"
    problem = control_character_problem(path)
    if problem:
        return problem
    if path.startswith("/"):
        return "absolute path not allowed (must be relative to the destination)"
    parts = path.split("/")
    if ".." in parts:
        return "'..' component not allowed"
    if "" in parts or "." in parts:
        return "not in canonical form (empty or '.' component)"
    return None


def remote_path_problem(path: str) -> str | None:
    """Why ``path`` is not an acceptable remote path, or None.

    Relative remote paths are relative to the login's home folder, as in sftp.
    """
    if not path:
        return "empty path"
    return control_character_problem(path)


def name_problem(name: str) -> str | None:
    """Why a task name or destination cannot be stored, or None."""
    if not name:
        return "must not be empty"
    return control_character_problem(name)


def sha256_problem(digest: str) -> str | None:
    if _SHA256.fullmatch(digest) is None:
        return "expected 64 lowercase hexadecimal digits"
    return None


def _check(problem: str | None, what: str, value: object) -> None:
    if problem is not None:
        raise ValueError(f"{what} {value!r}: {problem}")


def _check_int(value: object, what: str, *, non_negative: bool) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class SourceRecord:
    """The remote file as it was when fetched."""

    path: str
    size: int
    mtime: int
    sha256: str | None = None

    def __post_init__(self) -> None:
        _check(remote_path_problem(self.path), "source path", self.path)
        _check_int(self.size, "source size", non_negative=True)
        _check_int(self.mtime, "source mtime", non_negative=False)
        if self.sha256 is not None:
            _check(sha256_problem(self.sha256), "source sha256", self.sha256)


@dataclass(frozen=True)
class ResultRecord:
    """One local file a source produced, relative to the task's destination folder."""

    path: str
    size: int
    mtime: int
    sha256: str

    def __post_init__(self) -> None:
        _check(relative_path_problem(self.path), "result path", self.path)
        _check_int(self.size, "result size", non_negative=True)
        _check_int(self.mtime, "result mtime", non_negative=False)
        _check(sha256_problem(self.sha256), "result sha256", self.sha256)


@dataclass(frozen=True)
class Entry:
    """One remote file and what it became locally.

    ``results`` is kept sorted by path (whatever order it was given in), so two
    entries with the same results compare equal.  ``archive`` is the relative
    path the downloaded archive had, whether it was kept or removed after
    extraction.  ``complete=False`` is an intent record: it is written before
    the results are moved into place, so a crash in between still leaves them
    known as dataferry's own.
    """

    source: SourceRecord
    results: tuple[ResultRecord, ...]
    archive: str | None = None
    kept_archive: bool = False
    complete: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.source, SourceRecord):
            raise ValueError(f"entry source: expected a SourceRecord, got {self.source!r}")
        results = tuple(sorted(self.results, key=lambda result: result.path))
        for result in results:
            if not isinstance(result, ResultRecord):
                raise ValueError(f"entry results: expected ResultRecord, got {result!r}")
        for earlier, later in itertools.pairwise(results):
            if earlier.path == later.path:
                raise ValueError(f"result path {later.path!r} listed twice for {self.source.path}")
        object.__setattr__(self, "results", results)
        if self.archive is not None:
            _check(relative_path_problem(self.archive), "archive path", self.archive)
        if self.kept_archive and self.archive is None:
            raise ValueError(f"{self.source.path}: kept_archive is true but archive is not set")

    def result(self, relative_path: str) -> ResultRecord | None:
        for result in self.results:
            if result.path == relative_path:
                return result
        return None

    def owns_archive(self, relative_path: str) -> bool:
        """True when ``relative_path`` is this entry's archive and it may be on disk."""
        return self.archive == relative_path and (self.kept_archive or not self.complete)


@dataclass(frozen=True)
class TaskRecord:
    """What one task put into its destination folder.

    ``entries`` is keyed by the source's remote path.  No two entries may list
    the same result path: each local file has one owner.
    """

    destination: str
    entries: Mapping[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.destination, str):
            raise ValueError(f"destination: expected a string, got {self.destination!r}")
        _check(name_problem(self.destination), "destination", self.destination)
        entries = dict(sorted(self.entries.items()))
        owners: dict[str, str] = {}
        for key, entry in entries.items():
            if not isinstance(entry, Entry):
                raise ValueError(f"entry {key!r}: expected an Entry, got {entry!r}")
            if key != entry.source.path:
                raise ValueError(
                    f"entry key {key!r} differs from its source path {entry.source.path!r}"
                )
            for result in entry.results:
                other = owners.setdefault(result.path, key)
                if other != key:
                    raise ValueError(
                        f"result path {result.path!r} is listed by both {other} and {key}"
                    )
        object.__setattr__(self, "entries", MappingProxyType(entries))

    def owner_of(self, relative_path: str) -> Entry | None:
        """The entry that produced ``relative_path``.

        Results are looked up first; failing that, an archive that may be on disk
        (kept, or the entry is still incomplete).
        """
        for entry in self.entries.values():
            if entry.result(relative_path) is not None:
                return entry
        for entry in self.entries.values():
            if entry.owns_archive(relative_path):
                return entry
        return None

    def merged(self, upsert: Iterable[Entry] = (), remove: Iterable[str] = ()) -> TaskRecord:
        """This record with entries removed (by remote path), then entries added or replaced.

        An entry in ``upsert`` replaces the entry with the same source path.  When
        it lists a result path that another entry listed, the file on disk is now
        the new entry's, so that path is dropped from the other entry.
        """
        entries = dict(self.entries)
        for key in remove:
            entries.pop(key, None)
        # Who owns each result path: one pass, so merging n entries stays linear.
        owner = {result.path: key for key, other in entries.items() for result in other.results}
        for entry in upsert:
            key = entry.source.path
            previous = entries.get(key)
            if previous is not None:
                for result in previous.results:
                    if owner.get(result.path) == key:
                        del owner[result.path]
            entries[key] = entry
            for result in entry.results:
                other_key = owner.get(result.path)
                if other_key is not None and other_key != key:
                    other = entries[other_key]
                    kept = tuple(r for r in other.results if r.path != result.path)
                    entries[other_key] = replace(other, results=kept)
                owner[result.path] = key
        return TaskRecord(self.destination, entries)


@dataclass(frozen=True)
class Manifest:
    """Every task's record, keyed by task name."""

    tasks: Mapping[str, TaskRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = dict(sorted(self.tasks.items()))
        for name, record in tasks.items():
            if not isinstance(name, str):
                raise ValueError(f"task name: expected a string, got {name!r}")
            _check(name_problem(name), "task name", name)
            if not isinstance(record, TaskRecord):
                raise ValueError(f"task {name!r}: expected a TaskRecord, got {record!r}")
        object.__setattr__(self, "tasks", MappingProxyType(tasks))

    def task(self, task: str) -> TaskRecord | None:
        return self.tasks.get(task)

    def entry(self, task: str, remote_path: str) -> Entry | None:
        """The entry for the remote file ``remote_path`` of ``task``, if recorded."""
        record = self.tasks.get(task)
        return None if record is None else record.entries.get(remote_path)

    def owner_of(self, task: str, relative_result_path: str) -> Entry | None:
        """The entry of ``task`` that produced ``relative_result_path``, if any."""
        record = self.tasks.get(task)
        return None if record is None else record.owner_of(relative_result_path)

    def with_task(self, task: str, record: TaskRecord | None) -> Manifest:
        """This manifest with ``task`` set to ``record`` (or dropped when None)."""
        tasks = dict(self.tasks)
        if record is None:
            tasks.pop(task, None)
        else:
            tasks[task] = record
        return Manifest(tasks)
