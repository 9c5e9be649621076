"""Names from a server are untrusted: which ones may become local names, and how to show any.

A listed name becomes a path under the destination only when it is one plain
path component: not empty, not ``.`` or ``..``, no ``/``, no NUL or other
control character, at most 255 bytes (what Linux filesystems take), and not
one of dataferry's own bookkeeping names. Anything else is skipped with a
warning that shows the name escaped (docs/reliability.md: hostile servers).
"""

from __future__ import annotations

import os
import re

MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_SHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def is_bookkeeping(name: str) -> bool:
    """Hidden files dataferry keeps beside the data while it works (partial downloads
    and their sidecars, extraction staging folders)."""
    return name.startswith(".") and "dataferry" in name


def unsafe_name_reason(name: str) -> str | None:
    """Why a listed name may not become a local file name, or None when it may."""
    if name in ("", ".", ".."):
        return "not a file name"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if _CONTROL.search(name):
        return "contains a control character"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if is_bookkeeping(name):
        return "a name dataferry uses for its own files"
    return None


def shown(text: str) -> str:
    """text with control characters, bidirectional overrides and undecodable bytes
    escaped: safe to print to a terminal or a log line."""
    return _NOT_SHOWN.sub(
        lambda found: (
            f"\\x{ord(found.group()):02x}"
            if ord(found.group()) < 0x100
            else f"\\u{ord(found.group()):04x}"
        ),
        text,
    )
