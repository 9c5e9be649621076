"""The development server: an embedded read-only SFTP server, its sample data and the demo.

Used by ``dataferry demo``, ``dataferry serve``, the development image and the
tests; the production image does not carry this package (Dockerfile.prod), and
the command line says so when it is missing.

Importing this package is cheap: each name loads its module (and asyncssh) on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .demo import run_demo
    from .sample import generate_sample_dataset
    from .server import EmbeddedSFTPServer, serve

_LAZY = {
    "EmbeddedSFTPServer": ".server",
    "serve": ".server",
    "generate_sample_dataset": ".sample",
    "run_demo": ".demo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = ["EmbeddedSFTPServer", "generate_sample_dataset", "run_demo", "serve"]
