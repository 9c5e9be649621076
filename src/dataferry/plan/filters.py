"""Which remote files a task fetches: include, exclude, sizes, ages, ready markers.

rclone's filter rules are the model (docs/trees.md). Patterns match the path
relative to remote_file_path: ``*`` and ``?`` within one folder, ``**`` across
folders, ``[abc]`` and ``{csv,tsv}`` as in a shell. A pattern starting with
``/`` matches from the top; any other matches the end of the path (``*.csv``
is any CSV file at any depth). An exclude ending in ``/**`` or ``/`` names a
folder: it is not even listed. A file is kept when no exclude matches it and
an include does.

Pure logic (no I/O, no pydantic): the settings layer uses the parsers to
validate values, the engine builds a :class:`TreeFilter` per listing.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..observe import units
from ..sources.base import UNLISTABLE, Listing, RemoteFile, Selection
from .names import shown, unsafe_name_reason

log = logging.getLogger("dataferry.plan")

# Reasons a file or folder is left out: the words the INFO summary, --dry-run
# and --json use. Skips for these are reported per file; the others only counted
# (a folder may hold a million files that match nothing).
NO_INCLUDE = "matches no include pattern"
NOT_REGULAR = "not a regular file"
EXCLUDED = "excluded"
FOLDER_EXCLUDED = "folder excluded"
RECURSIVE_OFF = "recursive is off"
TOO_SMALL = "smaller than min_size"
TOO_BIG = "larger than max_size"
TOO_OLD = "older than newer_than or max_age"
TOO_YOUNG = "modified within min_age (may still be written)"
IS_MARKER = "a ready marker"
NO_MARKER = "its ready marker is not there yet"
UNSTABLE = "changed within stable_for (still being written)"
COUNTED_ONLY = frozenset({NO_INCLUDE, NOT_REGULAR})
# Skipped for now: a later run fetches them once they are ready.
NOT_READY = frozenset({TOO_YOUNG, NO_MARKER, UNSTABLE})

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from 250000, "500K", "10M", "1.5G" (decimal: M is 10**6), "10MiB" (2**20):
    the project's one size convention (observe/units.py)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10M or 250000")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like 10M, 10MiB or 250000")
    return units.parse_size(value)  # the one size convention


def parse_duration(value: object) -> float:
    """Seconds from 300, "90s", "15m", "2h", "3d", "1w", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 15m, 2h or 3d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", text, re.IGNORECASE):
            return sum(
                float(number) * _SECONDS[unit.lower()] for number, unit in _DURATION.findall(text)
            )
    raise ValueError("expected a duration like 90s, 15m, 2h or 3d (or seconds)")


def parse_time_bound(value: object, now: float | None = None) -> float:
    """A moment (epoch seconds) from a date ("2026-11-30"), a date and time in ISO 8601
    (UTC unless it says), or a duration meaning that long before now ("7d")."""
    if isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            return moment.timestamp()
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(
            "expected a date (2026-11-30), a date and time (2026-11-30T08:00:00Z) "
            "or a duration before now (7d, 12h)"
        ) from None
    return (time.time() if now is None else now) - seconds


def parse_marker(value: object) -> str:
    """A ready marker template: one file name containing {name}."""
    if not isinstance(value, str) or "{name}" not in value:
        raise ValueError('expected a file name containing {name}, like "{name}.done"')
    if "/" in value or value.replace("{name}", "") == "":
        raise ValueError('expected a file name containing {name}, like "{name}.done"')
    return value


def parse_after_fetch(value: object) -> str:
    """keep | delete | move:/absolute/remote/folder."""
    if isinstance(value, str):
        text = value.strip()
        if text in ("keep", "delete"):
            return text
        if text.startswith("move:"):
            folder = text.removeprefix("move:")
            if folder.startswith("/") and ".." not in PurePosixPath(folder).parts:
                return "move:" + str(PurePosixPath(folder))
    raise ValueError("expected keep, delete or move:/remote/folder (an absolute path)")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a filter pattern (rules: see the module's docstring)."""
    anchored = pattern.startswith("/")
    body = _translate(pattern.lstrip("/"))
    return re.compile(("^" if anchored else "^(?:.*/)?") + body + "$", re.DOTALL)


def _translate(pattern: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")  # zero or more folders
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif char == "*":
            out.append("[^/]*")
            index += 1
        elif char == "?":
            out.append("[^/]")
            index += 1
        elif char == "[" and (end := pattern.find("]", index + 2)) != -1:
            members = pattern[index + 1 : end]
            if members[0] in "!^":
                members = "^" + members[1:]
            out.append("[" + members.replace("\\", "\\\\") + "]")
            index = end + 1
        elif char == "{" and (end := pattern.find("}", index)) != -1:
            choices = pattern[index + 1 : end].split(",")
            out.append("(?:" + "|".join(_translate(choice) for choice in choices) + ")")
            index = end + 1
        elif char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
        else:
            out.append(re.escape(char))
            index += 1
    return "".join(out)


def needs_recursion(include: Iterable[str]) -> bool:
    """An include naming a path below the folder (``**``, or a ``/`` inside) walks the tree."""
    return any("**" in pattern or "/" in pattern.lstrip("/") for pattern in include)


@dataclass(frozen=True)
class FilterRules:
    """The rules of a task, as the settings give them (times as moments, epoch seconds)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    recursive: bool = False
    min_size: int | None = None
    max_size: int | None = None
    newer_than: float | None = None  # modified at or after this moment
    not_after: float | None = None  # modified at or before this moment (min_age)
    ready_marker: str | None = None


class TreeFilter(Selection):
    """Decides on each entry as the listing streams in; counts what it leaves out.

    report (optional) hears each file left out for a reason worth naming one by
    one (not the files that merely match no include pattern).
    """

    def __init__(
        self, rules: FilterRules, report: Callable[[str, str], None] | None = None
    ) -> None:
        super().__init__(rules.include)
        self.rules = rules
        self.report = report
        self.recursive = rules.recursive or needs_recursion(rules.include)
        self._include = [glob_regex(pattern) for pattern in rules.include]
        self._exclude = [glob_regex(p) for p in rules.exclude if not p.endswith("/")]
        self._folder_exclude = [
            glob_regex(p[:-3] if p.endswith("/**") else p[:-1])
            for p in rules.exclude
            if p.endswith(("/**", "/"))
        ]
        self._marker: re.Pattern[str] | None = None
        if rules.ready_marker is not None:
            before, after = rules.ready_marker.split("{name}", 1)
            self._marker = re.compile(
                "^" + re.escape(before) + "(.+)" + re.escape(after.replace("{name}", "")) + "$",
                re.DOTALL,
            )
        self.markers: set[str] = set()  # relative paths of the files whose marker is there
        self.files_left_out: Counter[str] = Counter()
        self.folders_left_out: Counter[str] = Counter()

    def folder_skip_reason(self, relative: str) -> str | None:
        if not self.recursive:
            return RECURSIVE_OFF
        name = PurePosixPath(relative).name
        unsafe = unsafe_name_reason(name)
        if unsafe is not None:
            log.warning("skipping folder %s from the server: %s", shown(repr(relative)), unsafe)
            return f"folder name {unsafe}"
        if any(pattern.match(relative) for pattern in self._folder_exclude):
            return FOLDER_EXCLUDED
        return None

    def file_skip_reason(self, relative: str, size: int, mtime: int) -> str | None:
        rules = self.rules
        if self._marker is not None:
            folder, _, name = relative.rpartition("/")
            found = self._marker.match(name)
            if found is not None:
                self.markers.add(f"{folder}/{found.group(1)}" if folder else found.group(1))
                return IS_MARKER
        if any(pattern.match(relative) for pattern in self._exclude):
            return EXCLUDED
        if not any(pattern.match(relative) for pattern in self._include):
            return NO_INCLUDE
        if rules.min_size is not None and size < rules.min_size:
            return TOO_SMALL
        if rules.max_size is not None and size > rules.max_size:
            return TOO_BIG
        if rules.newer_than is not None and mtime < rules.newer_than:
            return TOO_OLD
        if rules.not_after is not None and mtime > rules.not_after:
            return TOO_YOUNG
        return None

    def left_out(self, relative: str, reason: str) -> None:
        if reason == UNLISTABLE:
            log.warning("skipping %s from the server: %s", shown(repr(relative)), reason)
            self.files_left_out[reason] += 1
            return
        if relative.endswith("/"):
            self.folders_left_out[reason] += 1
        else:
            self.files_left_out[reason] += 1
        if self.report is not None and reason not in COUNTED_ONLY:
            self.report(relative.rstrip("/"), reason)

    def awaiting_markers(self, listing: Listing) -> Listing:
        """The listing without the files whose ready marker is missing (told as left out)."""
        if self._marker is None or not listing.is_folder:
            return listing
        kept: list[RemoteFile] = []
        for file in listing.files:
            relative = relative_path(listing.path, file.path)
            if relative in self.markers:
                kept.append(file)
            else:
                self.left_out(relative, NO_MARKER)
        return Listing(listing.path, listing.is_folder, tuple(kept))

    def summary(self) -> str | None:
        """ "left out 12 excluded, 3 subfolders (recursive is off)", or None when nothing was."""
        parts = [f"{count} {reason}" for reason, count in sorted(self.files_left_out.items())]
        parts += [
            f"{count} subfolder{'s' if count > 1 else ''} ({reason})"
            for reason, count in sorted(self.folders_left_out.items())
        ]
        return "left out: " + ", ".join(parts) if parts else None


def relative_path(root: str, remote_path: str) -> str:
    """remote_path below root, POSIX ("sub/a.csv")."""
    return PurePosixPath(remote_path).relative_to(root).as_posix()


def unstable(first: Listing, second: Listing) -> tuple[Listing, list[RemoteFile]]:
    """The files of second listed alike (size and mtime) in first, and those that were not."""
    before = {file.path: (file.size, file.mtime) for file in first.files}
    kept: list[RemoteFile] = []
    changed: list[RemoteFile] = []
    for file in second.files:
        (kept if before.get(file.path) == (file.size, file.mtime) else changed).append(file)
    return Listing(second.path, second.is_folder, tuple(kept)), changed
