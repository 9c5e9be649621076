"""The embedded SFTP server, over real sockets on 127.0.0.1 with a real asyncssh client.

Each test runs its own event loop with ``asyncio.run`` and its own server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest
from dotenv import dotenv_values

from dataferry._exceptions import ConfigError
from dataferry.devserver.sample import (
    MARCH_REMOTE_DIR,
    REMOTE_BASE,
    SampleDataset,
    generate_sample_dataset,
)
from dataferry.devserver.server import EmbeddedSFTPServer, serve

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def connect(
    server: EmbeddedSFTPServer, known_hosts: Path, **options: Any
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    options.setdefault("password", server.password)
    options.setdefault("username", server.username)
    async with asyncssh.connect(
        server.connect_host,
        server.port,
        known_hosts=str(known_hosts),
        # Hermetic: no keys, agent or ssh config from the machine running the tests.
        client_keys=options.pop("client_keys", None),
        agent_path=None,
        config=None,
        **options,
    ) as conn:
        yield conn


def with_server(
    root: Path, tmp_path: Path, body: Callable[[EmbeddedSFTPServer, Path], Awaitable[T]]
) -> T:
    """Start a server for root, write its known_hosts, run body(server, known_hosts)."""

    async def scenario() -> T:
        async with EmbeddedSFTPServer(root) as server:
            known_hosts = tmp_path / "known_hosts"
            server.write_known_hosts(known_hosts)
            return await body(server, known_hosts)

    return run(scenario())


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    return generate_sample_dataset(tmp_path_factory.mktemp("server-root"), size_bytes=600_000)


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """A served root next to an outside folder, with symlinks that try to leave the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the root\n")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "inside.csv").write_text("a,b\n1,2\n")
    (root / "data" / "link-inside.csv").symlink_to("inside.csv")
    (root / "escape-file").symlink_to("../outside/secret.txt")
    (root / "escape-abs").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    os.mkfifo(root / "data" / "pipe")  # must never block the server
    return root


# --- reading ------------------------------------------------------------------------


def test_lists_and_reads_the_sample_tree_byte_for_byte(
    sample: SampleDataset, tmp_path: Path
) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn, conn.start_sftp_client() as sftp:
            base = set(await sftp.listdir(REMOTE_BASE)) - {".", ".."}
            assert base == {"january-small.csv.zip", "february-small.tar.gz", "march-small"}
            march = set(await sftp.listdir(MARCH_REMOTE_DIR)) - {".", ".."}
            assert march == {
                f.remote_path.rsplit("/", 1)[1]
                for f in sample.files
                if f.remote_path.startswith(MARCH_REMOTE_DIR)
            }
            for f in sample.files:
                attrs = await sftp.stat(f.remote_path)
                assert attrs.size == f.size
                async with sftp.open(f.remote_path, "rb") as remote:
                    assert await remote.read() == f.local_path.read_bytes(), f.remote_path
            # The parallel block download path too, into a local file.
            spaced = f"{MARCH_REMOTE_DIR}/march small 2.csv"
            await sftp.get(spaced, tmp_path / "copy.csv", block_size=16384)
            assert (tmp_path / "copy.csv").read_bytes() == sample.file(
                spaced
            ).local_path.read_bytes()

    with_server(sample.root, tmp_path, body)


def test_speaks_sftp_version_3_even_when_offered_more(jail: Path, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with (
            connect(server, known_hosts) as conn,
            conn.start_sftp_client(sftp_version=6) as sftp,
        ):
            assert sftp.version == 3
            async with sftp.open("/data/inside.csv", "rb") as f:
                assert await f.read() == b"a,b\n1,2\n"

    with_server(jail, tmp_path, body)


def test_known_hosts_and_env_lines_describe_the_running_server(
    sample: SampleDataset, tmp_path: Path
) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        line = server.known_hosts_line()
        assert line.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 AAAA")
        assert known_hosts.read_text() == line + "\n"
        env_file = tmp_path / "server.env"
        env_file.write_text("\n".join(server.env_lines()) + "\n")
        values = dotenv_values(env_file)
        assert values == {
            "REMOTE_HOST_ADDRESS": "127.0.0.1",
            "REMOTE_PORT": str(server.port),
            "USERNAME": server.username,
            "PASSWORD": server.password,
            "SSH_KNOWN_HOSTS": str(known_hosts.resolve()),
        }
        assert server.password not in repr(server)

    with_server(sample.root, tmp_path, body)


def test_env_lines_quote_awkward_passwords(tmp_path: Path) -> None:
    password = "p a's\\s #w\"rd=$HOME"
    server = EmbeddedSFTPServer(tmp_path, password=password, username="me")
    server.port = 2222  # not started: only formatting is under test
    env_file = tmp_path / "x.env"
    env_file.write_text("\n".join(server.env_lines(tmp_path / "kh")) + "\n")
    for interpolate in (True, False):
        values = dotenv_values(env_file, interpolate=interpolate)
        assert values["PASSWORD"] == password
    assert values["SSH_KNOWN_HOSTS"] == str((tmp_path / "kh").resolve())


def test_write_known_hosts_replaces_only_this_servers_entry(tmp_path: Path) -> None:
    server = EmbeddedSFTPServer(tmp_path)
    server.port = 2222
    old = EmbeddedSFTPServer(tmp_path)
    old.port = 2222
    other = EmbeddedSFTPServer(tmp_path)
    other.port = 2223
    known_hosts = tmp_path / "known_hosts"
    stale_key = " ".join(old.known_hosts_line().split()[1:])
    known_hosts.write_text(
        "# my hosts\n"
        f"{other.known_hosts_line()}\n"
        f"{old.known_hosts_line()}\n"
        f"example.org,[127.0.0.1]:2222 {stale_key}\n"
    )
    server.write_known_hosts(known_hosts)
    lines = known_hosts.read_text().splitlines()
    assert lines == [
        "# my hosts",
        other.known_hosts_line(),
        f"example.org {stale_key}",
        server.known_hosts_line(),
    ]
    # Plain host name for port 22, as OpenSSH writes it.
    server.port = 22
    assert server.known_hosts_line().startswith("127.0.0.1 ssh-ed25519 ")


def test_hashed_known_hosts_entry_is_replaced(tmp_path: Path) -> None:
    server = EmbeddedSFTPServer(tmp_path)
    server.port = 2200
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[127.0.0.1]:2200", "sha1").digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{hashed} ssh-ed25519 AAAAstale\n")
    server.write_known_hosts(known_hosts)
    assert known_hosts.read_text() == server.known_hosts_line() + "\n"


# --- authentication and host keys ---------------------------------------------------


def test_wrong_password_and_wrong_user_are_refused(sample: SampleDataset, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server, known_hosts, password=server.password + "x"):
                pass
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server, known_hosts, username="root"):
                pass
        async with connect(server, known_hosts) as conn:  # the right one still works
            assert conn.get_extra_info("username") == server.username

    with_server(sample.root, tmp_path, body)


def test_client_rejects_a_server_with_a_different_host_key(
    sample: SampleDataset, tmp_path: Path
) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        impostor = EmbeddedSFTPServer(sample.root)
        impostor.port = server.port  # same host:port, different key
        wrong = tmp_path / "wrong_known_hosts"
        impostor.write_known_hosts(wrong)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            async with connect(server, wrong):
                pass
        # No entry at all is refused as well.
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            async with connect(server, empty):
                pass

    with_server(sample.root, tmp_path, body)


def test_given_host_key_and_public_key_login(sample: SampleDataset, tmp_path: Path) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")

    async def scenario() -> None:
        async with EmbeddedSFTPServer(
            sample.root, host_key=host_key, client_keys=[client_key]
        ) as server:
            known_hosts = tmp_path / "known_hosts"
            server.write_known_hosts(known_hosts)
            assert host_key.export_public_key().decode().split()[1] in known_hosts.read_text()
            async with connect(server, known_hosts, password=None, client_keys=[client_key]):
                pass
            with pytest.raises(asyncssh.PermissionDenied):
                async with connect(server, known_hosts, password=None, client_keys=[stranger]):
                    pass

    run(scenario())


# --- confinement and read-only ----------------------------------------------------------


def test_dotdot_cannot_climb_out_of_the_root(jail: Path, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.realpath("/../..") == "/"
            assert await sftp.realpath("..") == "/"
            assert sorted(await sftp.listdir("/../..")) == sorted(await sftp.listdir("/"))
            for path in (
                "/../outside/secret.txt",
                "../../outside/secret.txt",
                "/data/../../outside",
            ):
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.stat(path)
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.open(path, "rb")

    with_server(jail, tmp_path, body)


def test_symlinks_pointing_outside_the_root_are_refused(jail: Path, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn, conn.start_sftp_client() as sftp:
            for path in ("/escape-file", "/escape-abs", "/escape-dir/secret.txt"):
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.open(path, "rb")
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.stat(path)
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.listdir("/escape-dir")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.readlink("/escape-abs")
            # Links that stay inside the root work, and report in-root paths.
            async with sftp.open("/data/link-inside.csv", "rb") as f:
                assert await f.read() == b"a,b\n1,2\n"
            assert await sftp.readlink("/data/link-inside.csv") == "/data/inside.csv"
            with pytest.raises(asyncssh.SFTPFailure, match="Not a regular file"):
                await sftp.open("/data/pipe", "rb")

    with_server(jail, tmp_path, body)


def test_every_write_is_refused(jail: Path, tmp_path: Path) -> None:
    local = tmp_path / "upload.txt"
    local.write_text("new\n")
    before = {p: p.read_bytes() for p in (jail / "data").iterdir() if p.is_file()}

    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn, conn.start_sftp_client() as sftp:
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: sftp.open("/data/inside.csv", "wb"),
                lambda: sftp.open("/data/inside.csv", "ab"),
                lambda: sftp.open("/data/inside.csv", "r+b"),
                lambda: sftp.open("/data/new.csv", "xb"),
                lambda: sftp.put(local, "/data/upload.txt"),
                lambda: sftp.mkdir("/data/sub"),
                lambda: sftp.rmdir("/data"),
                lambda: sftp.remove("/data/inside.csv"),
                lambda: sftp.rename("/data/inside.csv", "/data/moved.csv"),
                lambda: sftp.posix_rename("/data/inside.csv", "/data/moved.csv"),
                lambda: sftp.symlink("/data/inside.csv", "/data/another-link"),
                lambda: sftp.link("/data/inside.csv", "/data/hardlink"),
                lambda: sftp.chmod("/data/inside.csv", 0o777),
                lambda: sftp.setstat("/data/inside.csv", asyncssh.SFTPAttrs(permissions=0o600)),
            ]
            for attempt in attempts:
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await attempt()
            # A handle opened for reading cannot be written through either.
            async with sftp.open("/data/inside.csv", "rb") as f:
                with pytest.raises(asyncssh.SFTPError):
                    await f.write(b"x")

    with_server(jail, tmp_path, body)
    after = {p: p.read_bytes() for p in (jail / "data").iterdir() if p.is_file()}
    assert after == before
    assert not (jail / "data" / "sub").exists()


# --- exec ------------------------------------------------------------------------------


def test_sha256sum_matches_hashlib(sample: SampleDataset, tmp_path: Path) -> None:
    files = [f for f in sample.files if f.kind != "other"][:4]
    files.append(sample.file(f"{MARCH_REMOTE_DIR}/march small 2.csv"))

    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn:
            paths = " ".join(shlex.quote(f.remote_path) for f in files)
            result = await conn.run(f"sha256sum -- {paths}")
            assert result.exit_status == 0
            assert result.stderr == ""
            expected = "".join(
                f"{hashlib.sha256(f.local_path.read_bytes()).hexdigest()}  {f.remote_path}\n"
                for f in files
            )
            assert result.stdout == expected

    with_server(sample.root, tmp_path, body)


def test_sha256sum_reports_missing_paths_and_escapes(jail: Path, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn:
            result = await conn.run("sha256sum -- /data/inside.csv /nope /data /escape-abs")
            assert result.exit_status == 1
            digest = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
            assert result.stdout == f"{digest}  /data/inside.csv\n"
            assert result.stderr == (
                "sha256sum: /nope: No such file or directory\n"
                "sha256sum: /data: Is a directory\n"
                "sha256sum: /escape-abs: Permission denied\n"
            )
            result = await conn.run("sha256sum -- /data/pipe")
            assert result.exit_status == 1
            assert result.stderr == "sha256sum: /data/pipe: Not a regular file\n"
            result = await conn.run("sha256sum -- /../outside/secret.txt")
            assert result.exit_status == 1
            assert "outside the root" not in str(result.stdout)

    with_server(jail, tmp_path, body)


def test_other_commands_and_shells_are_refused(sample: SampleDataset, tmp_path: Path) -> None:
    async def body(server: EmbeddedSFTPServer, known_hosts: Path) -> None:
        async with connect(server, known_hosts) as conn:
            for command in (
                "ls /",
                "cat /etc/passwd",
                "sha256sum /etc/passwd",  # no "--": not the supported form
                "sha256sum --",
                "sha256sum -- /x; rm -rf /",
                "sh -c 'echo hi'",
                "'unterminated",
                "scp -f /etc/passwd",  # no scp server either
            ):
                result = await conn.run(command)
                assert result.exit_status == 127, command
                assert result.stdout == ""
                assert "only `sha256sum -- PATH...`" in str(result.stderr)
            # A shell or another subsystem runs nothing either: the same refusal.
            # (asyncssh's process_factory takes every session but SFTP, so the
            # refusal is an exit status rather than a failed channel request.)
            for kind in ({}, {"subsystem": "netconf"}):
                result = await conn.run(**kind)
                assert result.exit_status == 127, kind
                assert result.stdout == ""
                assert "only `sha256sum -- PATH...`" in str(result.stderr)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process("sha256sum -- /x", term_type="xterm")  # no pty

    with_server(sample.root, tmp_path, body)


# --- lifecycle ----------------------------------------------------------------------


def test_stop_ends_live_connections(sample: SampleDataset, tmp_path: Path) -> None:
    async def scenario() -> None:
        server = EmbeddedSFTPServer(sample.root)
        await server.start()
        known_hosts = tmp_path / "known_hosts"
        server.write_known_hosts(known_hosts)
        async with connect(server, known_hosts) as conn:
            await server.stop()
            await asyncio.wait_for(conn.wait_closed(), 5)
        await server.stop()  # idempotent

    run(scenario())


def test_busy_port_and_missing_root_are_config_errors(
    sample: SampleDataset, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with EmbeddedSFTPServer(sample.root) as first:
            with pytest.raises(ConfigError, match="cannot listen"):
                await EmbeddedSFTPServer(sample.root, port=first.port).start()
        with pytest.raises(ConfigError, match="not a directory"):
            await EmbeddedSFTPServer(tmp_path / "missing").start()
        with pytest.raises(ConfigError):
            EmbeddedSFTPServer(sample.root, password="")

    run(scenario())


class ServeThread:
    """serve() on a thread, stopped through its stop_event; errors kept for the test."""

    def __init__(self, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            serve(stop_event=self.stop, **kwargs)
        except BaseException as exc:  # re-raised by the test thread in finish()
            self.errors.append(exc)

    def wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert self.thread.is_alive(), self.errors
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.errors:
            raise self.errors[0]


def test_serve_generates_sample_writes_env_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATAFERRY_SERVE_PASSWORD", raising=False)
    root = tmp_path / "served"
    env_out = tmp_path / "conf" / ".env"
    served = ServeThread(
        root=root,
        host="127.0.0.1",
        port=0,
        username="ferry",
        password=None,
        known_hosts_out=None,
        env_out=env_out,
        sample_size=200_000,
    )
    try:
        served.wait_for(env_out)
        assert stat.S_IMODE(env_out.stat().st_mode) == 0o600
        values = dotenv_values(env_out)
        known_hosts = Path(str(values["SSH_KNOWN_HOSTS"]))
        assert known_hosts.exists()  # written next to the .env when not asked for

        async def check() -> None:
            async with (
                asyncssh.connect(
                    str(values["REMOTE_HOST_ADDRESS"]),
                    int(str(values["REMOTE_PORT"])),
                    username=values["USERNAME"],
                    password=values["PASSWORD"],
                    known_hosts=str(known_hosts),
                    client_keys=None,
                    agent_path=None,
                    config=None,
                ) as conn,
                conn.start_sftp_client() as sftp,
            ):
                names = await sftp.listdir(MARCH_REMOTE_DIR)
                assert "march small 2.csv" in names

        run(check())
    finally:
        served.finish()
    err = capsys.readouterr().err
    assert str(values["PASSWORD"]) not in err
    assert f"127.0.0.1:{values['REMOTE_PORT']}" in err
    assert (root / REMOTE_BASE.lstrip("/") / "january-small.csv.zip").is_file()


def test_serve_prints_a_generated_password_only_without_env_out(
    sample: SampleDataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATAFERRY_SERVE_PASSWORD", raising=False)
    known_hosts = tmp_path / "known_hosts"
    served = ServeThread(
        root=sample.root,
        host="127.0.0.1",
        port=0,
        username="ferry",
        password=None,
        known_hosts_out=known_hosts,
        env_out=None,
        sample_size=None,
    )
    try:
        served.wait_for(known_hosts)
        deadline = time.monotonic() + 10
        while "throwaway" not in (err := capsys.readouterr().err):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        served.finish()
    password_lines = [line for line in err.splitlines() if "password:" in line]
    assert len(password_lines) == 1
    assert "throwaway dev credential" in password_lines[0]


def test_serve_takes_the_password_from_the_environment(
    sample: SampleDataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATAFERRY_SERVE_PASSWORD", "from-the-env-123")
    known_hosts = tmp_path / "known_hosts"
    served = ServeThread(
        root=sample.root,
        host="127.0.0.1",
        port=0,
        username="ferry",
        password=None,
        known_hosts_out=known_hosts,
        env_out=None,
        sample_size=None,
    )
    try:
        served.wait_for(known_hosts)
        port = int(known_hosts.read_text().split("]:", 1)[1].split()[0])

        async def check() -> None:
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                username="ferry",
                password="from-the-env-123",
                known_hosts=str(known_hosts),
                client_keys=None,
                agent_path=None,
                config=None,
            ):
                pass

        run(check())
    finally:
        served.finish()
    assert "from-the-env-123" not in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_exits_cleanly_on_signals(sample: SampleDataset, tmp_path: Path, sig: int) -> None:
    env_out = tmp_path / "serve.env"
    code = (
        "import sys; from pathlib import Path; from dataferry.devserver.server import serve; "
        "serve(Path(sys.argv[1]), host='127.0.0.1', port=0, username='u', password=None, "
        "known_hosts_out=None, env_out=Path(sys.argv[2]), sample_size=None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATAFERRY_SERVE_PASSWORD"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(sample.root), str(env_out)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not env_out.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # the signal handlers are installed before the files are written
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping" in err
    assert str(dotenv_values(env_out)["PASSWORD"]) not in err
