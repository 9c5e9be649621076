"""Fixtures that start real servers: OpenSSH sshd on loopback, and dataferry's embedded server.

``remote`` is parametrised over both, so each scenario that uses it runs
against each server. Remote files are put under ``remote.root``; ask
``remote.path(local)`` for the path the server shows.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).parent))

from dataferry._server import EmbeddedSFTPServer
from dataferry._settings import ConnectionSettings, HostKeyPolicy
from sshd import OpenSSHServer, ensure_password_user, sshd_available, start_sshd

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSHServer]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


class EmbeddedInThread:
    """The embedded server on its own event loop, so tests can call asyncio.run freely."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = EmbeddedSFTPServer(root)

    def start(self) -> EmbeddedSFTPServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSFTPServer]:
    runner = EmbeddedInThread(tmp_path_factory.mktemp("embedded-root"))
    yield runner.start()
    runner.stop()


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
        env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in (
                "REMOTE_HOST_ADDRESS",
                "REMOTE_PORT",
                "USERNAME",
                "PASSWORD",
                "SSH_KEY_FILE",
                "SSH_KNOWN_HOSTS",
                "SSH_HOST_KEY_POLICY",
            )
        }
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


def embedded_connection(server: EmbeddedSFTPServer, known_hosts: Path) -> ConnectionSettings:
    server.write_known_hosts(known_hosts)
    return ConnectionSettings(
        host=server.host,
        port=server.port,
        username=server.username,
        password=SecretStr(server.password),
        known_hosts=known_hosts,
        host_key_policy=HostKeyPolicy.STRICT,
    )


@pytest.fixture(params=["openssh", "embedded"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    known_hosts = tmp_path / "known_hosts"
    if request.param == "openssh":
        server: OpenSSHServer = request.getfixturevalue("sshd_server")
        root = tmp_path / "remote"
        root.mkdir()
        return Remote("openssh", root, sshd_connection(server, known_hosts), None)
    embedded: EmbeddedSFTPServer = request.getfixturevalue("embedded_server")
    root = embedded.root / tmp_path.name
    root.mkdir()
    return Remote("embedded", root, embedded_connection(embedded, known_hosts), embedded.root)


@pytest.fixture
def password_user(sshd_server: OpenSSHServer) -> tuple[str, str]:
    """The throwaway sshd user with a password (root only)."""
    if sshd_server.password_user is None or os.geteuid() != 0:
        pytest.skip("password login to sshd needs a throwaway user, which needs root")
    ensure_password_user(sshd_server.password)
    return sshd_server.password_user, sshd_server.password


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dataferry`` (or a seed script) as a user would, capturing output."""
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
