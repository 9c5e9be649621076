"""Shared test helpers: a server-agnostic view of a remote folder, and running the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from dataferry._connection import ENV_VARIABLES, ConnectionSettings, HostKeyPolicy
from dataferry._settings import TaskSettings
from tests.support.sshd import OpenSSHServer

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Remote:
    """A server plus a fresh folder on it for one test."""

    kind: str
    root: Path
    connection: ConnectionSettings
    server_root: Path | None  # the embedded server's "/"; None for sshd (real paths)

    def path(self, local: Path) -> str:
        """The remote path under which the server shows a local file."""
        if self.server_root is None:
            return str(local)
        return "/" + local.relative_to(self.server_root).as_posix()

    def env(self) -> dict[str, str]:
        """Environment variables for running the CLI against this server."""
        settings = self.connection
        env = {key: value for key, value in os.environ.items() if key not in ENV_VARIABLES}
        env.update(
            REMOTE_HOST_ADDRESS=settings.host,
            REMOTE_PORT=str(settings.port),
            USERNAME=settings.username,
            SSH_KNOWN_HOSTS=str(settings.known_hosts),
            SSH_HOST_KEY_POLICY=settings.host_key_policy.value,
        )
        if settings.password is not None:
            env["PASSWORD"] = settings.password.get_secret_value()
        if settings.key_file is not None:
            env["SSH_KEY_FILE"] = str(settings.key_file)
        return env


def sshd_connection(server: OpenSSHServer, known_hosts: Path) -> ConnectionSettings:
    server.write_known_hosts(known_hosts)
    return ConnectionSettings(
        host=server.host,
        port=server.port,
        username=server.username,
        key_file=server.client_key,
        known_hosts=known_hosts,
        host_key_policy=HostKeyPolicy.STRICT,
    )


def settings_for(remote_path: str, save: Path, **values: object) -> TaskSettings:
    """A task's settings, retrying without delay unless told otherwise."""
    return TaskSettings.model_validate(
        {
            "name": "t",
            "file_save_path": save,
            "remote_file_path": remote_path,
            "retry_delay": 0,
            **values,
        }
    )


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return hashlib.shake_256(f"seed-{seed}".encode()).digest(size)


def trust_port(connection: ConnectionSettings, port: int, directory: Path) -> Path:
    """A known_hosts file trusting the server's key on another port (a proxy's)."""
    key = connection.known_hosts.read_text().split(maxsplit=1)[1]
    known = directory / f"known_hosts_{port}"
    known.write_text(f"[127.0.0.1]:{port} {key}")
    return known


def through(connection: ConnectionSettings, port: int, directory: Path) -> ConnectionSettings:
    """The same server reached through a proxy listening on port."""
    known = trust_port(connection, port, directory)
    return replace(connection, port=port, known_hosts=known)


def env_through(
    env: dict[str, str], connection: ConnectionSettings, port: int, directory: Path
) -> dict[str, str]:
    """env with the server reached through a proxy listening on port (its host key
    trusted there), and this checkout's sources first for a CLI started by hand."""
    return {
        **env,
        "REMOTE_PORT": str(port),
        "SSH_KNOWN_HOSTS": str(trust_port(connection, port, directory)),
        "PYTHONPATH": str(REPO / "src"),
    }


def run_args(save: Path | str, remote_path: str, *extra: str) -> list[str]:
    """``-m dataferry run t --file_save_path SAVE --remote_file_path REMOTE EXTRA...``."""
    return [
        "-m",
        "dataferry",
        "run",
        "t",
        "--file_save_path",
        str(save),
        "--remote_file_path",
        remote_path,
        *extra,
    ]


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dataferry`` (or a seed script) as a user would, capturing output.

    This checkout's sources come first on the path: the virtualenv's editable
    install may point at another checkout (a git worktree shares the venv).
    """
    paths = [str(REPO / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return subprocess.run(
        [sys.executable, *args],
        env={**env, "PYTHONPATH": os.pathsep.join(paths)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
