"""Checking entries before they are written (no I/O).

``ExtractLimits`` holds the caps; ``EntryChecker`` applies the name and link
policy (policy.py), detects collisions and bad hard links, and counts members,
declared and written bytes, the compression ratio and trailing padding
against those caps.  Both formats feed it every entry, in archive order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from dataferry._exceptions import ArchiveError
from dataferry.observe.units import format_bytes

from .policy import (
    Refused,
    canonical_link_target,
    display_name,
    nfc_key,
    refusal_error,
    split_member_name,
)

_MAX_PADDING = 16 << 20  # zero bytes accepted after a tar's end-of-archive marker


@dataclass(frozen=True)
class ExtractLimits:
    """Caps that stop hostile archives (decompression bombs, inode floods).

    ``ratio_grace_bytes``: the ratio cap only applies once this much has been
    produced, so a tiny archive of very repetitive text is not refused.
    """

    max_total_bytes: int = 64 * 2**30
    max_ratio: float = 1000.0
    max_members: int = 1_000_000
    ratio_grace_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_total_bytes < 0 or self.max_members < 0 or self.ratio_grace_bytes < 0:
            raise ValueError("extract limits must not be negative")
        if not self.max_ratio > 0:
            raise ValueError("max_ratio must be positive")


class EntryKind(enum.Enum):
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(slots=True)
class Entry:
    parts: tuple[str, ...]  # as written: first spelling seen for each directory
    kind: EntryKind
    raw: str | None  # name in the archive; None for an implied parent directory


@dataclass(slots=True)
class CheckedEntry:
    entry: Entry
    link_target: str | None = None  # canonical symlink target
    hardlink_to: tuple[str, ...] | None = None  # parts of the earlier file


class EntryChecker:
    """Applies the refusal rules and limits to a sequence of entries."""

    def __init__(
        self,
        archive: str,
        limits: ExtractLimits,
        compressed_bytes: Callable[[], int],
        *,
        declared_ratio_base: int | None = None,
    ) -> None:
        self.archive = archive
        self.limits = limits
        self._compressed_bytes = compressed_bytes
        self._declared_ratio_base = declared_ratio_base
        self.entries: dict[tuple[str, ...], Entry] = {}  # key: NFC components
        self.on_new_entry: Callable[[Entry], None] | None = None
        self.members = 0
        self.declared = 0
        self.written = 0
        self.padding = 0

    def refuse(self, raw: str, reason: str) -> ArchiveError:
        return refusal_error(self.archive, raw, reason)

    def corrupt(self, detail: str, raw: str | None = None, *, after: bool = False) -> ArchiveError:
        where = ""
        if raw is not None:
            where = f' {"after" if after else "at"} entry "{display_name(raw)}"'
        return ArchiveError(f"{self.archive}: corrupt or truncated archive{where}: {detail}")

    def _ratio_exceeded(self, produced: int, compressed: int) -> bool:
        return produced > self.limits.ratio_grace_bytes and produced > self.limits.max_ratio * max(
            compressed, 1
        )

    def _add(self, entry: Entry) -> None:
        self.entries[nfc_key(entry.parts)] = entry
        if self.on_new_entry is not None:
            self.on_new_entry(entry)

    def check(
        self,
        raw: str,
        kind: EntryKind,
        *,
        size: int = 0,
        symlink: str | None = None,
        hardlink: str | None = None,
    ) -> CheckedEntry | None:
        """Check one entry before it is written; None means "the archive root"."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(raw, f"archive has more than {self.limits.max_members} entries")
        try:
            parts = split_member_name(raw)
            if not parts:
                if kind is EntryKind.DIR and hardlink is None:
                    return None
                raise Refused("empty name")
            target = canonical_link_target(parts, symlink) if symlink is not None else None
        except Refused as refused:
            raise self.refuse(raw, refused.reason) from None
        try:
            link_parts = split_member_name(hardlink) if hardlink is not None else None
        except Refused as refused:
            raise self.refuse(
                raw, f'hard link target "{display_name(hardlink or "")}": {refused.reason}'
            ) from None

        key = nfc_key(parts)
        written: tuple[str, ...] = ()
        for i in range(1, len(parts)):
            prev = self.entries.get(key[:i])
            if prev is None:
                written = (*written, parts[i - 1])
                self._add(Entry(written, EntryKind.DIR, None))
            elif prev.kind is not EntryKind.DIR:
                raise self.refuse(
                    raw, f'parent "{display_name(prev.raw or "")}" is a {prev.kind.value}'
                )
            else:
                written = prev.parts
        prev = self.entries.get(key)
        if prev is not None:
            if prev.kind is EntryKind.DIR and kind is EntryKind.DIR:
                return CheckedEntry(prev)  # the same directory listed twice is harmless
            other = prev.raw if prev.raw is not None else "/".join(prev.parts)
            raise self.refuse(raw, f'collides with "{display_name(other)}" after normalisation')

        hardlink_to: tuple[str, ...] | None = None
        if link_parts is not None:
            origin = self.entries.get(nfc_key(link_parts)) if link_parts else None
            if origin is None or origin.kind is not EntryKind.FILE:
                raise self.refuse(
                    raw,
                    f'hard link target "{display_name(hardlink or "")}" is not an earlier '
                    "regular file of the archive",
                )
            hardlink_to = origin.parts

        self.declared += size
        if self.declared > self.limits.max_total_bytes:
            raise self.refuse(
                raw,
                self._total_message(),
            )
        if self._declared_ratio_base is not None and self._ratio_exceeded(
            self.declared, self._declared_ratio_base
        ):
            raise self.refuse(raw, self._ratio_message())

        entry = Entry((*written, parts[-1]), kind, raw)
        self._add(entry)
        return CheckedEntry(entry, target, hardlink_to)

    def _total_message(self) -> str:
        limit = self.limits.max_total_bytes
        return (
            f"total uncompressed size exceeds the limit of {limit} bytes "
            f"({format_bytes(limit)}, max_extract_bytes)"
        )

    def _ratio_message(self) -> str:
        return f"compression ratio exceeds {self.limits.max_ratio:g}:1 (decompression bomb?)"

    def count_written(self, size: int, raw: str) -> None:
        """Count bytes about to be written; refuse once a limit is crossed."""
        self.written += size
        if self.written > self.limits.max_total_bytes:
            raise self.refuse(
                raw,
                self._total_message(),
            )
        if self._ratio_exceeded(self.written, self._compressed_bytes()):
            raise self.refuse(raw, self._ratio_message())

    def count_padding(self, size: int) -> None:
        self.padding += size
        if self.padding > _MAX_PADDING:
            raise self.corrupt("too much data after the end-of-archive marker")
