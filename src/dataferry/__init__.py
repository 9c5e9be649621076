"""dataferry: pull datasets from an SSH server, fast, verified, and never half-written.

The public API is small: load settings, run a task, catch :class:`DataferryError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ._connection import ConnectionSettings, HostKeyPolicy, resolve_connection
from ._exceptions import (
    ArchiveError,
    AuthenticationError,
    ConfigError,
    DataferryError,
    DestinationError,
    DriftError,
    FrozenError,
    HostKeyError,
    OverwriteConflictError,
    RemotePathError,
    TransferError,
)
from .observe import TaskObserver, TaskState

if TYPE_CHECKING:
    from ._settings import ConfigFile, TaskSettings, resolve_task
    from .engine import TaskReport, run_task

# Loaded on first use: task settings bring pydantic, tasks bring asyncssh and
# extraction. The command line opens its connection first (cli/__init__.py);
_LAZY = {
    "ConfigFile": "._settings",
    "TaskSettings": "._settings",
    "resolve_task": "._settings",
    "TaskReport": ".engine",
    "run_task": ".engine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ArchiveError",
    "AuthenticationError",
    "ConfigError",
    "ConfigFile",
    "ConnectionSettings",
    "DataferryError",
    "DestinationError",
    "DriftError",
    "FrozenError",
    "HostKeyError",
    "HostKeyPolicy",
    "OverwriteConflictError",
    "RemotePathError",
    "TaskObserver",
    "TaskReport",
    "TaskSettings",
    "TaskState",
    "TransferError",
    "__version__",
    "resolve_connection",
    "resolve_task",
    "run_task",
]
