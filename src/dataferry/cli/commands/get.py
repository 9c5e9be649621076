"""``dataferry get SOURCE DEST [task flags]``: one ad-hoc task, no config.json.

SOURCE is scp's ``[user@]host:path`` or ``sftp://[user@]host[:port]/path``.
The task runs exactly as ``run`` runs one (same engine, defaults, manifest);
only its settings come from the command line instead of config.json.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..._connection import ConnectionSettings, read_environment, resolve_connection
from ..._exceptions import ConfigError
from ..definition import overrides_from
from .dry_run import RunMode
from .run import _run_tasks

if TYPE_CHECKING:
    from ..._settings import TaskSettings

# [user@]host:path; host may be [IPv6]. A drive letter or ./x is no remote.
_SCP = re.compile(r"(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@/\s\[\]]+):(?P<path>.*)")


@dataclass(frozen=True)
class Source:
    """Where SOURCE points: who, which server, which remote path (maybe a glob)."""

    user: str | None
    host: str
    port: int | None
    path: str


def parse_source(text: str) -> Source:
    """Parse SOURCE; every problem is one ConfigError naming SOURCE."""
    if text.startswith("sftp://"):
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"SOURCE {text}: the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ConfigError(f"SOURCE {text}: no host (sftp://[user@]host[:port]/path)")
        if parts.password is not None:
            raise ConfigError(
                "SOURCE: a password in the URL would show in process lists and shell "
                "history; set PASSWORD in the environment or .env"
            )
        path = unquote(parts.path) or "/"
        # sftp://host/~/x is x in the home folder (as curl and OpenSSH's sftp read it).
        if path == "/~" or path.startswith("/~/"):
            path = path[1:]
        host = parts.hostname
        user = unquote(parts.username) if parts.username else None
        return Source(user, host, port, _home_relative(path, text))
    match = _SCP.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"SOURCE {text}: expected [user@]host:path or sftp://[user@]host[:port]/path"
        )
    host = match["host"].strip("[]")
    return Source(match["user"], host, None, _home_relative(match["path"], text))


def _home_relative(path: str, text: str) -> str:
    """'' and '~' are the home folder, '~/x' is x in it: SFTP starts in the home folder."""
    if path in ("", "~"):
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    if path.startswith("~"):
        raise ConfigError(f"SOURCE {text}: ~user paths are not supported; give the full path")
    return path


def split_glob(remote: str) -> tuple[str, str | None]:
    """A path whose last part is a glob: (its folder, the pattern); else (path, None)."""
    from ..._settings import split_remote_glob

    try:
        return split_remote_glob(remote)
    except ValueError as exc:
        raise ConfigError(f"SOURCE path {exc}") from None


def connection_for(source: Source) -> ConnectionSettings:
    """The environment's and .env's connection settings, aimed at SOURCE's server.

    USERNAME, REMOTE_PORT and PASSWORD belong to REMOTE_HOST_ADDRESS: they are
    kept only when SOURCE names that same host. Keys, known_hosts, the host-key
    policy, the ssh config and jump hosts apply to any host.
    """
    env = dict(read_environment())
    if env.get("REMOTE_HOST_ADDRESS", "").strip() != source.host:
        for variable in ("USERNAME", "REMOTE_PORT", "PASSWORD"):
            env.pop(variable, None)
    env["REMOTE_HOST_ADDRESS"] = source.host
    if source.user:
        env["USERNAME"] = source.user
    if source.port is not None:
        env["REMOTE_PORT"] = str(source.port)
    return resolve_connection(env, source="SOURCE, environment or .env")


def get_command(args: argparse.Namespace) -> int:
    source = parse_source(args.source)
    remote, pattern = split_glob(source.path)
    overrides = overrides_from(args)
    if pattern is not None and "include" in overrides:
        raise ConfigError(f"SOURCE {args.source} is a glob already: leave out --include")
    destination = str(args.destination)
    if not destination.strip():
        raise ConfigError("DEST must not be empty")
    if not destination.endswith("/") and Path(destination).expanduser().is_dir():
        destination += "/"  # as scp: an existing folder receives the files
    values: dict[str, object] = {
        **overrides,
        "file_save_path": destination,
        "remote_file_path": remote,
    }
    if pattern is not None:
        values["include"] = [pattern]
    if args.no_extract:
        values["extract"] = False

    def prepare() -> list[TaskSettings]:
        from ..._settings import resolve_task
        from ...engine import run_task  # noqa: F401  (loads extraction too, off the critical path)

        return [resolve_task(f"get {args.source}", None, values)]

    return _run_tasks(prepare, lambda: connection_for(source), mode=RunMode.of(args))
