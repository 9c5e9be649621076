"""Start-up cost: import asyncssh without its ~150 ms search for liboqs.

asyncssh looks for liboqs (post-quantum key exchange) with
``ctypes.util.find_library``, which on Linux runs ``ldconfig`` and then ``gcc``
and ``ld`` as subprocesses, twice, on every start. A glob of the usual
library folders finds an installed liboqs just as well, in microseconds.
"""

from __future__ import annotations

import ctypes.util
import glob
import sys

_LIBRARY_DIRS = (
    "/usr/local/lib",
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
)


def _find_liboqs() -> str | None:
    for directory in _LIBRARY_DIRS:
        found = sorted(glob.glob(f"{directory}/liboqs.so*"))
        if found:
            return found[0]
    return None


def import_asyncssh() -> None:
    if "asyncssh" in sys.modules:
        return
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        if name in ("oqs", "liboqs"):
            return _find_liboqs()
        return original(name)

    ctypes.util.find_library = find_library
    try:
        import asyncssh  # noqa: F401
    finally:
        ctypes.util.find_library = original


import_asyncssh()
