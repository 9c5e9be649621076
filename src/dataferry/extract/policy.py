"""Name and link policy: which entry names and symlink targets may be extracted.

Pure functions on strings, no I/O.  ``split_member_name`` turns an archive
name into safe path components (or raises ``Refused``),
``canonical_link_target`` does the same for a symlink target, ``nfc_key`` is
the form collisions are detected on, and ``display_name`` escapes a name for
a one-line message.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import PurePosixPath

from dataferry._exceptions import ArchiveError

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4095
_SHOWN_NAME_MAX = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")


class Refused(Exception):
    """A name or link target that may not be extracted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def display_name(name: str) -> str:
    """Make an entry name safe for a one-line message (escape controls, cap length)."""
    out: list[str] = []
    for ch in name[:_SHOWN_NAME_MAX]:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    if len(name) > _SHOWN_NAME_MAX:
        out.append("...")
    return "".join(out)


def _component_bytes(part: str) -> int:
    try:
        size = len(os.fsencode(part))
    except UnicodeEncodeError:
        # Lone surrogates other than the surrogateescape range: no file name.
        raise Refused("name is not valid Unicode") from None
    if size > MAX_COMPONENT_BYTES:
        raise Refused(f"name component longer than {MAX_COMPONENT_BYTES} bytes")
    return size


def split_member_name(name: str) -> tuple[str, ...]:
    """Split an archive name into safe components; () is the archive root."""
    if _CONTROL.search(name):
        raise Refused("control character in name")
    text = name.replace("\\", "/")
    if text.startswith("/"):
        raise Refused("absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if parts and _DRIVE.match(parts[0]):
        raise Refused("absolute path (Windows drive)")
    if ".." in parts:
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                raise Refused("path escapes the destination")
        raise Refused("'..' component in path")
    total = 0
    for part in parts:
        total += _component_bytes(part) + 1
    if total > MAX_PATH_BYTES:
        raise Refused(f"path longer than {MAX_PATH_BYTES} bytes")
    return tuple(parts)


def refusal_error(archive: str, entry: str, reason: str) -> ArchiveError:
    """The ArchiveError for a refused entry, naming the archive and the entry."""
    return ArchiveError(f'{archive}: refused entry "{display_name(entry)}": {reason}')


def normalize_member_path(name: str, *, archive_name: str = "archive") -> PurePosixPath:
    """Return the safe relative path an archive entry name maps to.

    Raises ArchiveError (naming ``archive_name`` and the entry) for every name
    that is absolute, climbs out, is empty, or cannot be a file name.
    """
    try:
        parts = split_member_name(name)
    except Refused as refused:
        raise refusal_error(archive_name, name, refused.reason) from None
    if not parts:
        raise refusal_error(archive_name, name, "empty name")
    return PurePosixPath(*parts)


def canonical_link_target(link_parts: tuple[str, ...], target: str) -> str:
    """Check a symlink target; return it in canonical form (``../../a/b``)."""
    if not target:
        raise Refused("empty symlink target")
    if _CONTROL.search(target):
        raise Refused("control character in symlink target")
    text = target.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or (parts and _DRIVE.match(parts[0])):
        raise Refused(f'absolute symlink target "{display_name(target)}"')
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    down = parts[ups:]
    if ups > len(link_parts) - 1:
        raise Refused(f'symlink target "{display_name(target)}" escapes the destination')
    if ".." in down:
        # Only climb-then-descend targets are accepted: "a/../b" would depend
        # on what "a" is on disk, which this check must not trust.
        raise Refused(f'symlink target "{display_name(target)}" has ".." after a directory name')
    total = 0
    for part in down:
        total += _component_bytes(part) + 1
    if total + 3 * ups > MAX_PATH_BYTES:
        raise Refused("symlink target too long")
    return "/".join([".."] * ups + down) or "."


def nfc_key(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The form collisions are detected on: look-alike names collide."""
    return tuple(unicodedata.normalize("NFC", p) for p in parts)
