"""A small read-only SFTP server on asyncssh, for the demo and local development.

``dataferry demo`` runs :class:`EmbeddedSFTPServer` in-process against the
generated sample tree; ``dataferry serve DIR`` runs :func:`serve` until
interrupted. The server:

* authenticates one user by password (optionally also by public keys);
* chroots SFTP to ``root`` and refuses any path whose resolved form leaves it,
  symlinks included;
* is read-only: every write, remove, rename, mkdir or attribute change gets
  SFTP "permission denied";
* has no shell, no pty, no forwarding; the only exec command is
  ``sha256sum -- PATH...`` (coreutils output format), so integrity checks can
  ask for remote digests; anything else (another command, a shell, a subsystem
  other than SFTP) runs nothing and exits with status 127.

Only asyncssh's documented API is used: ``asyncssh.listen`` with an
``sftp_factory`` (an :class:`asyncssh.SFTPServer` subclass) and a
``process_factory`` (a handler given an :class:`asyncssh.SSHServerProcess`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import hmac
import logging
import os
import posixpath
import secrets
import shlex
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

import asyncssh
from asyncssh import (
    ACE4_APPEND_DATA,
    ACE4_WRITE_ATTRIBUTES,
    ACE4_WRITE_DATA,
    FXF_ACCESS_DISPOSITION,
    FXF_APPEND,
    FXF_APPEND_DATA,
    FXF_CREAT,
    FXF_EXCL,
    FXF_OPEN_EXISTING,
    FXF_TRUNC,
    FXF_WRITE,
)

from dataferry._connection import ConnectionSettings, HostKeyPolicy, Secret
from dataferry._exceptions import ConfigError

from .sample import generate_sample_dataset

__all__ = ["PASSWORD_ENV_VAR", "EmbeddedSFTPServer", "serve"]

log = logging.getLogger("dataferry.server")

PASSWORD_ENV_VAR = "DATAFERRY_SERVE_PASSWORD"
# The receive window this server advertises per channel: it bounds data in
# flight from client to server (SFTP requests). Download speed is bounded by
# the *client's* window, so clients should raise theirs (window= on connect).
CHANNEL_WINDOW = 16 * 2**20
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_EXEC_REFUSED = 127
_READ_ONLY = "Read-only server"
_SFTP_VERSION = 3  # what OpenSSH speaks; asyncssh's read path stats every read from v6 on


# --- path confinement --------------------------------------------------------------


def _inside(root: bytes, real: bytes) -> bool:
    prefix = root if root.endswith(b"/") else root + b"/"
    return real == root or real.startswith(prefix)


def _confine(root: bytes, path: bytes) -> tuple[bytes, bytes]:
    """Map a client path under ``root``; return (mapped, fully resolved).

    ".." cannot climb above the virtual "/" (normpath against "/"), and the
    resolved path, after following every symlink, must still be under root.
    Raises SFTPPermissionDenied otherwise. Note: a symlink swapped in between
    this check and the open is not caught; the served tree is assumed to be
    owned by whoever runs the server.
    """
    virtual = posixpath.normpath(posixpath.join(b"/", path))
    mapped = posixpath.join(root, virtual.lstrip(b"/"))
    real = os.path.realpath(mapped)
    if not _inside(root, real):
        raise asyncssh.SFTPPermissionDenied("Path leaves the served directory")
    return mapped, real


class _ReadOnlySFTPServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server, chrooted, symlink-confined and read-only."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], root: bytes) -> None:
        super().__init__(chan, chroot=root)
        self._root = root

    def map_path(self, path: bytes) -> bytes:
        # Every path-based operation of the base class goes through here.
        return _confine(self._root, path)[0]

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | FXF_EXCL):
            raise asyncssh.SFTPPermissionDenied(_READ_ONLY)
        return self._open_read(path)

    def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs
    ) -> object:
        writes = ACE4_WRITE_DATA | ACE4_APPEND_DATA | ACE4_WRITE_ATTRIBUTES
        if (
            desired_access & writes
            or flags & FXF_APPEND_DATA
            or flags & FXF_ACCESS_DISPOSITION != FXF_OPEN_EXISTING
        ):
            raise asyncssh.SFTPPermissionDenied(_READ_ONLY)
        return self._open_read(path)

    def _open_read(self, path: bytes) -> object:
        # Open the resolved path so the checked target is the one opened.
        real = _confine(self._root, path)[1]
        # A FIFO or device would block the event loop on open or read.
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise asyncssh.SFTPFailure("Not a regular file")
        return open(real, "rb", buffering=0)  # closed by close()

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        # pread: one syscall, no shared file position (requests are pipelined).
        assert hasattr(file_obj, "fileno")
        return os.pread(file_obj.fileno(), size, offset)

    def readlink(self, path: bytes) -> bytes:
        mapped, real = _confine(self._root, path)
        os.readlink(mapped)  # raises EINVAL for a non-link, as the client expects
        # Report the resolved target as the client sees it (never a host path).
        return b"/" + real[len(self._root) :].lstrip(b"/")

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def remove(self, path: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def rmdir(self, path: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied(_READ_ONLY)


# --- exec: sha256sum only ------------------------------------------------------------


def _sha256_file(path: bytes) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _coreutils_line(digest: str, name: str) -> str:
    # coreutils escapes names holding a backslash or newline and flags the line with "\".
    if "\\" in name or "\n" in name:
        return "\\" + digest + "  " + name.replace("\\", "\\\\").replace("\n", "\\n") + "\n"
    return f"{digest}  {name}\n"


async def _run_sha256sum(
    root: bytes, paths: list[str], stdout: asyncssh.SSHWriter[str], stderr: asyncssh.SSHWriter[str]
) -> int:
    status = 0
    for name in paths:
        try:
            real = _confine(root, os.fsencode(name))[1]
            mode = os.stat(real).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
            if not stat.S_ISREG(mode):  # a FIFO would block the hashing thread forever
                raise OSError(errno.EINVAL, "Not a regular file")
            # Off the event loop: files can be hundreds of MB.
            digest = await asyncio.to_thread(_sha256_file, real)
        except asyncssh.SFTPPermissionDenied:
            stderr.write(f"sha256sum: {name}: Permission denied\n")
            status = 1
        except OSError as exc:
            stderr.write(f"sha256sum: {name}: {exc.strerror or 'read error'}\n")
            status = 1
        else:
            stdout.write(_coreutils_line(digest, name))
    return status


def _split_command(command: str) -> list[str]:
    """Split like a POSIX shell would; [] when unparsable or chaining commands.

    Nothing is run through a shell, but ``a; b`` or ``a | b`` means more than
    one command to a real sshd, so such lines are refused rather than hashed.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # "#" inside a name is not a comment
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return []
    if any(tok and all(c in lexer.punctuation_chars for c in tok) for tok in tokens):
        return []
    return tokens


async def _run_process(root: bytes, process: asyncssh.SSHServerProcess[str]) -> None:
    """The process_factory: every session but SFTP (exec, shell, other subsystems)."""
    command = process.command
    argv = _split_command(command) if command is not None else []
    if len(argv) >= 3 and argv[0] == "sha256sum" and argv[1] == "--":
        log.info("exec sha256sum for %d path(s)", len(argv) - 2)
        status = await _run_sha256sum(root, argv[2:], process.stdout, process.stderr)
    else:
        if command is not None:
            log.info("refused exec command %r", command[:200])
        elif process.subsystem is not None:
            log.info("refused subsystem %r", process.subsystem[:200])
        else:
            log.info("refused a shell")
        process.stderr.write("dataferry serve: only `sha256sum -- PATH...` can be run here\n")
        status = _EXEC_REFUSED
    await process.stdout.drain()
    process.exit(status)


# --- authentication --------------------------------------------------------------


class _AuthServer(asyncssh.SSHServer):
    def __init__(self, owner: EmbeddedSFTPServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)
        log.debug("connection from %s", conn.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        owner = self._owner
        # Both comparisons always run: no timing hint about which one failed.
        user_ok = secrets.compare_digest(username.encode(), owner.username.encode())
        password_ok = secrets.compare_digest(password.encode(), owner.password.encode())
        if not (user_ok and password_ok):
            log.warning("password authentication failed for user %r", username)
        return user_ok and password_ok

    def public_key_auth_supported(self) -> bool:
        return bool(self._owner._client_keys)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        user_ok = secrets.compare_digest(username.encode(), self._owner.username.encode())
        return user_ok and key.public_data in self._owner._client_keys


# --- the server -------------------------------------------------------------------------


def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _hashed_match(entry: str, pattern: str) -> bool:
    """Does a hashed known_hosts name ``|1|salt|hash`` stand for ``pattern``?"""
    try:
        _, _, salt, digest = entry.split("|")
        mac = hmac.new(base64.b64decode(salt), pattern.encode(), "sha1").digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except ValueError:  # malformed entry (binascii.Error is a ValueError): not ours
        return False


def _atomic_write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)  # before any secret is written
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _env_quote(value: str) -> str:
    safe = all(c.isalnum() or c in "_-.,/:@+%=" for c in value)
    if value and safe:
        return value
    # Single quotes: python-dotenv takes the content literally except \\ and \'.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class EmbeddedSFTPServer:
    """A read-only SFTP server for ``root`` on a local port, as an async context manager.

    ``port=0`` picks a free port; read :attr:`port` after start.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "dataferry",
        password: str | None = None,
        host_key: asyncssh.SSHKey | None = None,
        client_keys: Sequence[asyncssh.SSHKey] = (),
        sftp_server_class: type[_ReadOnlySFTPServer] | None = None,
    ) -> None:
        if password == "":
            raise ConfigError("the SFTP server password must not be empty")
        if not username:
            raise ConfigError("the SFTP server username must not be empty")
        self.root = Path(root)
        self.host = host
        self.port = port
        self.username = username
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self.password_generated = password is None
        self.host_key = host_key or asyncssh.generate_private_key("ssh-ed25519")
        self._client_keys = frozenset(k.public_data for k in client_keys)
        self._root_bytes = b""
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._known_hosts_path: Path | None = None
        # Tests serve misbehaving variants (tests/support/hostile.py).
        self._sftp_server_class = sftp_server_class or _ReadOnlySFTPServer

    def __repr__(self) -> str:  # never show the password
        return (
            f"EmbeddedSFTPServer(root={self.root!s}, {self.host}:{self.port}, user={self.username})"
        )

    @property
    def connect_host(self) -> str:
        """Address a local client dials (loopback when bound to all interfaces)."""
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    @property
    def host_key_fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")

    async def start(self) -> None:
        if self._acceptor is not None:
            return
        if not self.root.is_dir():
            raise ConfigError(f"cannot serve {self.root}: not a directory")
        self._root_bytes = root = os.fsencode(os.path.realpath(self.root))

        server_class = self._sftp_server_class

        def sftp_factory(chan: object) -> _ReadOnlySFTPServer:
            # asyncssh passes the session's SSHServerChannel (annotated as its base class).
            return server_class(cast(asyncssh.SSHServerChannel[bytes], chan), root)

        async def process_factory(process: asyncssh.SSHServerProcess[str]) -> None:
            await _run_process(root, process)

        try:
            self._acceptor = await asyncssh.listen(
                self.host,
                self.port,
                server_factory=lambda: _AuthServer(self),
                server_host_keys=[self.host_key],
                sftp_factory=sftp_factory,
                sftp_version=_SFTP_VERSION,
                process_factory=process_factory,
                allow_scp=False,  # "scp ..." is just another refused command
                window=CHANNEL_WINDOW,
                allow_pty=False,
                agent_forwarding=False,
                x11_forwarding=False,
                login_timeout=60,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._acceptor.get_port()
        log.info(
            "SFTP server for %s listening on %s:%d (user %s)",
            self.root,
            self.host,
            self.port,
            self.username,
        )

    async def stop(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is None:
            return
        acceptor.close()
        # Closing the listener leaves live connections open; end them too.
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
        await acceptor.wait_closed()
        log.info("SFTP server on port %d stopped", self.port)

    async def __aenter__(self) -> EmbeddedSFTPServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def known_hosts_line(self) -> str:
        """OpenSSH known_hosts entry: ``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        if not self.port:
            raise RuntimeError("server not started: the port is not known yet")
        algorithm, blob = self.host_key.export_public_key("openssh").decode().split()[:2]
        return f"{_host_pattern(self.connect_host, self.port)} {algorithm} {blob}"

    def connection_settings(self, known_hosts: Path) -> ConnectionSettings:
        """How a client reaches this server, trusting its key through ``known_hosts``."""
        self.write_known_hosts(known_hosts)
        return ConnectionSettings(
            host=self.connect_host,
            port=self.port,
            username=self.username,
            password=Secret(self.password),
            known_hosts=known_hosts,
            host_key_policy=HostKeyPolicy.STRICT,
        )

    def write_known_hosts(self, path: Path) -> None:
        """Add this server's entry to ``path``, replacing older entries for the same host:port."""
        line = self.known_hosts_line()
        pattern = line.split(" ", 1)[0]
        path = Path(path)
        kept: list[str] = []
        mode = 0o644
        if path.exists():
            mode = path.stat().st_mode & 0o777
            for old in path.read_text(encoding="utf-8").splitlines():
                fields = old.split(None, 1)
                if not fields or old.lstrip().startswith(("#", "@")):
                    kept.append(old)
                    continue
                names = [
                    n
                    for n in fields[0].split(",")
                    if n != pattern and not (n.startswith("|1|") and _hashed_match(n, pattern))
                ]
                if names and len(fields) == 2:
                    kept.append(",".join(names) + " " + fields[1])
        kept.append(line)
        _atomic_write(path, "\n".join(kept) + "\n", mode)
        self._known_hosts_path = path.resolve()

    def env_lines(self, known_hosts_path: Path | None = None) -> list[str]:
        """``KEY=value`` lines for a .env file (contains the password: write it 0600).

        SSH_KNOWN_HOSTS is the known_hosts file path: ``known_hosts_path`` or
        the last one given to :meth:`write_known_hosts`; omitted if neither.
        """
        values = {
            "REMOTE_HOST_ADDRESS": self.connect_host,
            "REMOTE_PORT": str(self.port),
            "USERNAME": self.username,
            "PASSWORD": self.password,
        }
        known = known_hosts_path.resolve() if known_hosts_path else self._known_hosts_path
        if known is not None:
            values["SSH_KNOWN_HOSTS"] = str(known)
        return [f"{key}={_env_quote(value)}" for key, value in values.items()]


# --- blocking entry point for `dataferry serve` ---------------------------------------------


def serve(
    root: Path,
    *,
    host: str,
    port: int,
    username: str,
    password: str | None,
    known_hosts_out: Path | None,
    env_out: Path | None,
    sample_size: int | None,
    stop_event: threading.Event | None = None,
) -> None:
    """Serve ``root`` read-only over SFTP until SIGINT/SIGTERM or ``stop_event``.

    The password comes from the argument, else ``$DATAFERRY_SERVE_PASSWORD``,
    else is generated. With ``env_out`` but no ``known_hosts_out``, the
    known_hosts file goes next to the .env file (``<env_out>.known_hosts``) so
    the .env is complete.
    """
    if password is None:
        password = os.environ.get(PASSWORD_ENV_VAR) or None
    root = Path(root)
    if sample_size is not None:
        if sample_size < 0:
            raise ConfigError("the sample size must be >= 0")
        root.mkdir(parents=True, exist_ok=True)
        dataset = generate_sample_dataset(root, size_bytes=sample_size)
        log.info("generated %d sample files under %s", len(dataset.files), root)
    if env_out is not None and known_hosts_out is None:
        known_hosts_out = env_out.with_name(env_out.name + ".known_hosts")
    server = EmbeddedSFTPServer(root, host=host, port=port, username=username, password=password)
    asyncio.run(_serve(server, known_hosts_out, env_out, stop_event))


async def _serve(
    server: EmbeddedSFTPServer,
    known_hosts_out: Path | None,
    env_out: Path | None,
    stop_event: threading.Event | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # no loop signal support (Windows): Ctrl-C still raises
                break
            handled.append(sig)
    try:
        async with server:
            if known_hosts_out is not None:
                server.write_known_hosts(known_hosts_out)
            if env_out is not None:
                header = "# dataferry serve: connection settings for this run (holds a password)"
                _atomic_write(env_out, "\n".join([header, *server.env_lines()]) + "\n", 0o600)
            _announce(server, known_hosts_out, env_out)
            while not stop.is_set():
                if stop_event is not None and stop_event.is_set():
                    break
                # Polls stop_event (a threading.Event cannot wake the loop itself).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.2)
            print("dataferry serve: stopping", file=sys.stderr)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _announce(
    server: EmbeddedSFTPServer, known_hosts_out: Path | None, env_out: Path | None
) -> None:
    where = f"{server.connect_host}:{server.port}"
    lines = [
        f"dataferry serve: serving {server.root.resolve()} read-only over SFTP on "
        f"{server.host or '*'}:{server.port}",
        f"  user:      {server.username}",
        f"  host key:  {server.host_key.get_algorithm()} {server.host_key_fingerprint}",
    ]
    if env_out is not None:
        lines.append(
            f"  settings:  {env_out} (REMOTE_HOST_ADDRESS, REMOTE_PORT, USERNAME, PASSWORD)"
        )
    elif server.password_generated:
        lines.append(
            f"  password:  {server.password}   <- throwaway dev credential for this run only"
        )
    else:
        lines.append("  password:  the one you supplied (not shown)")
    known_opt = ""
    if known_hosts_out is not None:
        lines.append(f"  known_hosts: {known_hosts_out}")
        known_opt = f"-o UserKnownHostsFile={shlex.quote(str(known_hosts_out))} "
    lines.append(f"  try: sftp -P {server.port} {known_opt}{server.username}@{server.connect_host}")
    lines.append(f"Listening at {where}; press Ctrl-C to stop.")
    print("\n".join(lines), file=sys.stderr, flush=True)
