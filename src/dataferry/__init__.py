"""dataferry: pull datasets from an SSH server, fast, verified, and never half-written.

The public API is small: load settings, run a task, catch :class:`DataferryError`.
"""

from __future__ import annotations

__version__ = "0.1.0"

# First: imports asyncssh without its slow library search (see _startup.py).
from . import _startup  # noqa: F401
from ._exceptions import (
    ArchiveError,
    AuthenticationError,
    ConfigError,
    DataferryError,
    DestinationError,
    HostKeyError,
    OverwriteConflictError,
    RemotePathError,
    TransferError,
)
from ._observer import TaskObserver
from ._settings import (
    ConfigFile,
    ConnectionSettings,
    HostKeyPolicy,
    TaskSettings,
    resolve_connection,
    resolve_task,
)
from ._tasks import TaskReport, run_task

__all__ = [
    "ArchiveError",
    "AuthenticationError",
    "ConfigError",
    "ConfigFile",
    "ConnectionSettings",
    "DataferryError",
    "DestinationError",
    "HostKeyError",
    "HostKeyPolicy",
    "OverwriteConflictError",
    "RemotePathError",
    "TaskObserver",
    "TaskReport",
    "TaskSettings",
    "TransferError",
    "__version__",
    "resolve_connection",
    "resolve_task",
    "run_task",
]
