"""SFTP over SSH (asyncssh): the connector, the session, the TCP layer under it.

``tcp`` loads without asyncssh (the command line opens its TCP connection
while asyncssh loads); the session classes load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import SSHConnector, SSHReader, SSHSource


def __getattr__(name: str) -> Any:
    if name in ("SSHConnector", "SSHReader", "SSHSource"):
        return getattr(importlib.import_module(".session", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SSHConnector", "SSHReader", "SSHSource"]
