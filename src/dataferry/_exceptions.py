"""One exception hierarchy; the CLI maps each class to its exit code in one place.

Every error carries a one-line, user-facing message that says what went wrong
and where. Messages never contain secrets (passwords, key passphrases).
"""

from __future__ import annotations


class DataferryError(Exception):
    """Base of every error dataferry reports to a user."""

    exit_code = 1


class ConfigError(DataferryError):
    """A bad value in config.json, .env, the environment or a flag."""

    exit_code = 2


class UnknownHostError(ConfigError):
    """The server's host name does not resolve: a typo, not worth retrying."""


class AuthenticationError(DataferryError):
    """Wrong credentials: retrying cannot help."""

    exit_code = 3


class HostKeyError(DataferryError):
    """Unknown or changed host key refused by the host-key policy."""

    exit_code = 3


class RemotePathError(DataferryError):
    """The remote path does not exist or cannot be read."""

    exit_code = 4


class TransferError(DataferryError):
    """A transfer still failing after the last try (transient causes)."""

    exit_code = 5


class ArchiveError(DataferryError):
    """A corrupt, unreadable, or refused (hostile) archive."""

    exit_code = 6


class DestinationError(DataferryError):
    """The local destination cannot take the result: conflict, full disk, no permission."""

    exit_code = 7


class OverwriteConflictError(DestinationError):
    """overwrite is false and the run would replace existing files."""


class DriftError(DataferryError):
    """verify found recorded files missing or changed on disk."""

    exit_code = 8


class FrozenError(DataferryError):
    """--frozen: the remote or the local data differs from what the manifest pins."""

    exit_code = 9


class ClusterError(DataferryError):
    """--scheduler/--workers: Dask is not installed, or its scheduler cannot be reached."""

    exit_code = 10


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error",
    2: "bad configuration or command-line value (also: a host name that does not resolve)",
    3: "authentication failed or host key refused",
    4: "remote path missing or unreadable",
    5: "transfer failed after the last retry",
    6: "corrupt, unreadable or refused archive",
    7: "destination problem: would overwrite, disk full, not writable",
    8: "verify found missing or changed files",
    9: "--frozen: the remote or the local data differs from the manifest",
    10: "Dask cluster: the dask extra is missing or the scheduler is unreachable",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM: docker stop, Kubernetes)",
}


class TransientError(Exception):
    """Internal: a failure worth retrying (connection refused, reset, lost, timed out,
    a file that changed during its transfer). Never shown as is: after the last
    try the engine turns it into :class:`TransferError`."""
