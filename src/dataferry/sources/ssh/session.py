"""The SFTP source: connecting, verifying host keys, listing, reading, error translation.

asyncssh is imported only in this package (and in the development server); the
engine sees :class:`SSHSource` through the Source interface and dataferry's own
exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from ..._connection import ConnectionSettings, HostKeyPolicy
from ..._exceptions import (
    ConfigError,
    HostKeyError,
    RemotePathError,
    TransientError,
)
from ..base import (
    UNLISTABLE,
    Listing,
    RemoteFile,
    Selection,
    Source,
    SourceConnector,
    SourceReader,
    as_selection,
)
from .hops import open_route
from .tcp import EarlyConnection

log = logging.getLogger("dataferry.ssh")

# A far link is bound by the channel window: asyncssh's 2 MiB default allows only
# 2 MiB in flight per round trip. 16 MiB covers ~500 Mbit/s at 30 ms RTT.
CHANNEL_WINDOW = 16 * 2**20
# AES-GCM is hardware accelerated on x86-64 (docs/benchmarks.md: ciphers); the
# rest of asyncssh's defaults follow, so any server still works.
# "^": OpenSSH's (and asyncssh's) syntax for "these first, then the defaults".
CIPHER_PREFERENCE = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
KEEPALIVE_INTERVAL = 20.0
# Larger SSH packets: fewer per-packet costs in Python (docs/benchmarks.md).
MAX_PACKET_SIZE = 256 * 1024


def _host_label(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _HostKeyChecker(asyncssh.SSHClient):
    """Decides on host keys missing from known_hosts, per the configured policy.

    asyncssh has already compared the offered key with the known_hosts entries
    for this host; this hook runs only when none matched.
    """

    def __init__(self, settings: ConnectionSettings, known: asyncssh.SSHKnownHosts | None):
        self._settings = settings
        self._known = known
        self.refusal: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        settings = self._settings
        label = _host_label(settings.host, settings.port)
        offered = f"{key.get_algorithm()} {key.get_fingerprint()}"
        known_keys: Sequence[asyncssh.SSHKey] = ()
        if self._known is not None:
            match_port = None if settings.port == 22 else settings.port
            known_keys = self._known.match(settings.host, addr, match_port)[0]
        if known_keys:
            self.refusal = (
                f"host key for {label} has CHANGED (offered {offered}; "
                f"{settings.known_hosts} has a different key): refusing to connect, someone "
                "may be intercepting. If the server's key really changed, remove the old entry "
                f"with: ssh-keygen -R '{label}' -f {settings.known_hosts}"
            )
            return False
        if settings.host_key_policy is HostKeyPolicy.ACCEPT_NEW:
            _record_host_key(settings.known_hosts, label, key)
            log.warning(
                "trusting new host %s (%s); recorded in %s", label, offered, settings.known_hosts
            )
            return True
        self.refusal = (
            f"host key for {label} is not known ({offered}, not in {settings.known_hosts}). "
            f"Check the fingerprint with the server's owner, then add it with: "
            f"ssh-keyscan -p {settings.port} {settings.host} >> {settings.known_hosts} "
            "(or run once with SSH_HOST_KEY_POLICY=accept-new)"
        )
        return False


def _record_host_key(known_hosts: Path, label: str, key: asyncssh.SSHKey) -> None:
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{label} {key.export_public_key('openssh').decode().strip()}\n"
    # O_APPEND: a concurrent writer (another task) cannot clobber our line.
    fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(line)


def _load_known_hosts(path: Path) -> asyncssh.SSHKnownHosts | None:
    try:
        return asyncssh.read_known_hosts(str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HostKeyError(f"{path}: cannot read known_hosts file: {exc}") from None


# OpenSSH's sftp-server answers reads of up to 255 KiB; larger requests come
# back short and cost an extra round trip.
DEFAULT_BLOCK_SIZE = 255 * 1024
MAX_BLOCK_SIZE = 1024 * 1024


class SSHReader(SourceReader):
    """An open remote file; reads go out without waiting for each other."""

    def __init__(self, file: RemoteFile, handle: asyncssh.SFTPClientFile, source: SSHSource):
        super().__init__(file)
        self._handle = handle
        self._source = source

    async def read(self, offset: int, length: int) -> bytes:
        with translate_sftp_errors(self.file.path):
            async with asyncio.timeout(self._source.request_timeout):
                data = await self._handle.read(length, offset)
        assert isinstance(data, bytes)  # opened in binary mode
        return data

    def close_later(self) -> None:
        self._source.close_later(self._handle)


class SSHSource(Source):
    """One SSH connection with one SFTP channel."""

    def __init__(
        self,
        connection: asyncssh.SSHClientConnection,
        sftp: asyncssh.SFTPClient,
        settings: ConnectionSettings,
    ):
        self.connection = connection
        self.sftp = sftp
        self.settings = settings
        self._background: set[asyncio.Task[None]] = set()
        self.round_trip = float("inf")

    def describe(self) -> str:
        return self.settings.describe()

    @property
    def block_size(self) -> int:
        limit = self.sftp.limits.max_read_len
        return min(limit, MAX_BLOCK_SIZE) if limit else DEFAULT_BLOCK_SIZE

    @property
    def max_open_handles(self) -> int:
        """The server's limit on open files (limits@openssh.com), 0 when it states none."""
        return int(self.sftp.limits.max_open_handles or 0)

    def close_later(self, handle: asyncssh.SFTPClientFile) -> None:
        """Close a remote file without waiting for the server's reply."""
        task = asyncio.ensure_future(handle.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background closes; their outcome does not matter to the data."""
        if self._background:
            # A stuck server may never answer them: give up after one request's time.
            _, late = await asyncio.wait(self._background, timeout=self.request_timeout)
            for task in late:
                task.cancel()

    async def stat(self, remote_path: str) -> asyncssh.SFTPAttrs:
        started = time.monotonic()
        with translate_sftp_errors(remote_path):
            async with asyncio.timeout(self.request_timeout):
                attrs = await self.sftp.stat(remote_path)
        self.round_trip = min(self.round_trip, time.monotonic() - started)
        return attrs

    async def find(self, remote_path: str, include: tuple[str, ...] | Selection) -> Listing:
        """The file at remote_path, or, when it is a folder, the files the selection keeps.

        The stat and the folder read go out together, so a folder costs one
        round trip less (~30 ms on a far link); for a file the server refuses
        the folder read at once, in the same round trip. Entries are filtered
        as they arrive: only kept files are held (a folder of a million entries
        matching nothing lists in bounded memory).
        """
        walk = _Walk(self, remote_path, as_selection(include))
        first = walk.start("")
        try:
            attrs = await self.stat(remote_path)
        except BaseException:
            first.abandon()
            raise
        if attrs.permissions is not None and stat.S_ISDIR(attrs.permissions):
            return Listing(remote_path, True, tuple(await walk.run(first)))
        first.abandon()
        if attrs.permissions is not None and not stat.S_ISREG(attrs.permissions):
            # A FIFO or device: opening it would block sshd's sftp-server for good.
            raise RemotePathError(f"remote path is not a regular file or folder: {remote_path}")
        file = RemoteFile(remote_path, attrs.size or 0, int(attrs.mtime or 0))
        return Listing(remote_path, False, (file,))

    async def remove(self, path: str) -> None:
        with translate_sftp_errors(path), _refused(f"cannot delete {path}"):
            async with asyncio.timeout(self.request_timeout):
                await self.sftp.remove(path)

    async def move(self, path: str, new_path: str) -> None:
        with translate_sftp_errors(new_path), _refused(f"cannot move {path} to {new_path}"):
            async with asyncio.timeout(self.request_timeout):
                await self.sftp.makedirs(str(PurePosixPath(new_path).parent), exist_ok=True)
                # SFTP's plain RENAME refuses an existing target (posix-rename would replace it).
                await self.sftp.rename(path, new_path)

    async def open(self, file: RemoteFile) -> SSHReader:
        """Open a remote file for reading; close it with its close_later()."""
        with translate_sftp_errors(file.path):
            async with asyncio.timeout(self.request_timeout):
                handle = await self.sftp.open(file.path, "rb", block_size=0)
        return SSHReader(file, handle, self)

    async def sha256_digests(self, remote_paths: list[str]) -> dict[str, str]:
        """Remote digests computed by ``sha256sum`` on the server (one command for all)."""
        if not remote_paths:
            return {}
        command = "sha256sum -- " + " ".join(shlex.quote(path) for path in remote_paths)
        try:
            result = await self.connection.run(command, check=False, timeout=3600)
        except asyncssh.ChannelOpenError as exc:
            raise ConfigError(
                f"verify is sha256 but {self.settings.describe()} refuses commands "
                f"({exc.reason}); set verify to size"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise TransientError(f"sha256sum on {self.settings.describe()}: {exc}") from exc
        output = str(result.stdout or "")
        lines = [line for line in output.splitlines() if line.strip()]
        if result.exit_status != 0 or len(lines) != len(remote_paths):
            detail = str(result.stderr or "").strip().splitlines()
            reason = detail[0] if detail else f"exit status {result.exit_status}"
            if result.exit_status == 1 and detail:
                # coreutils: some file could not be read.
                raise RemotePathError(f"sha256sum failed on the server: {reason}")
            raise ConfigError(
                f"verify is sha256 but {self.settings.describe()} cannot run sha256sum "
                f"({reason}); set verify to size"
            )
        # coreutils prefixes a line with a backslash when it escapes the name.
        return {
            path: line.lstrip("\\")[:64] for path, line in zip(remote_paths, lines, strict=True)
        }


# Folders read at once while walking a tree: each costs ~4 round trips (open,
# reads, close). A 111-folder tree at 30 ms RTT lists in 14.5 s one at a time,
# 2.0 s with 8, 0.8 s with 32, 0.6 s with 64 (docs/trees.md). Within the server's
# handle limit (OpenSSH: 512).
FOLDERS_IN_FLIGHT = 32
# Seconds between checks that every folder read still makes progress.
WATCH_STEP = 0.5


class _FolderRead:
    """One folder being read in its own task; progress is when its last entry came."""

    def __init__(self, walk: _Walk, relative: str) -> None:
        self.relative = relative
        self.remote_dir = _join(walk.root, relative) if relative else walk.root
        self.progress = asyncio.get_running_loop().time()
        self.task = asyncio.ensure_future(walk.read(self))

    def abandon(self) -> None:
        """Stop waiting for it. A stuck server would never answer the close a cancelled
        read sends; the try ends, and closing the connection ends the read."""
        if self.task.done():
            if not self.task.cancelled():
                self.task.exception()  # retrieved: its outcome no longer matters
        else:
            self.task.cancel()


class _Walk:
    """A folder (tree) read as a stream, FOLDERS_IN_FLIGHT folders at a time; a read
    that gets no entry for request_timeout fails the try, without waiting for it."""

    def __init__(self, source: SSHSource, root: str, selection: Selection) -> None:
        self.source = source
        self.root = root
        self.selection = selection
        self.links = _LinkCheck(source, root)
        self.files: list[RemoteFile] = []
        self.subfolders: deque[str] = deque()
        self.found = asyncio.Event()  # a subfolder was queued: start reading it now

    def start(self, relative: str) -> _FolderRead:
        return _FolderRead(self, relative)

    async def run(self, first: _FolderRead) -> list[RemoteFile]:
        """The kept files under root, sorted; first is the root's read, already started."""
        loop = asyncio.get_running_loop()
        timeout = self.source.request_timeout
        in_flight = min(FOLDERS_IN_FLIGHT, self.source.max_open_handles or FOLDERS_IN_FLIGHT)
        reading = {first}
        try:
            while reading:
                found = asyncio.ensure_future(self.found.wait())
                try:
                    await asyncio.wait(
                        {found, *(read.task for read in reading)},
                        timeout=min(WATCH_STEP, timeout),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    found.cancel()
                self.found.clear()
                now = loop.time()
                for read in list(reading):
                    if read.task.done():
                        reading.discard(read)
                        read.task.result()
                    elif now - read.progress > timeout:
                        raise TransientError(
                            f"the server did not answer a request for {read.remote_dir} in "
                            "time (request_timeout); it may be stuck"
                        )
                while self.subfolders and len(reading) < in_flight:
                    reading.add(self.start(self.subfolders.popleft()))
        finally:
            for read in reading:
                read.abandon()
        return sorted(self.files, key=lambda remote: remote.path)

    async def read(self, read: _FolderRead) -> None:
        """Sort each entry of one folder as it arrives (in read's own task)."""
        loop = asyncio.get_running_loop()
        selection, remote_dir, relative = self.selection, read.remote_dir, read.relative
        with translate_sftp_errors(remote_dir):
            entries = self.source.sftp.scandir(remote_dir)
            try:
                async for entry in entries:
                    read.progress = loop.time()
                    name = str(entry.filename)
                    if name in (".", ".."):
                        continue
                    path = f"{relative}/{name}" if relative else name
                    if not name or "/" in name or "\x00" in name:
                        # It names no entry of this folder: no request goes out for it.
                        selection.left_out(path, UNLISTABLE)
                        continue
                    mode = entry.attrs.permissions
                    if mode is not None and stat.S_ISLNK(mode):
                        # READDIR reports the link itself: see what it points at.
                        await self.links.resolve(path, remote_dir, name, self)
                        read.progress = loop.time()
                    else:
                        _sort(path, remote_dir, name, entry.attrs, selection, self)
            finally:
                closing = getattr(entries, "aclose", None)  # an async generator's
                if closing is not None:
                    await closing()


def _join(remote_dir: str, name: str) -> str:
    return str(PurePosixPath(remote_dir) / name)


def _sort(
    relative: str,
    remote_dir: str,
    name: str,
    attrs: asyncssh.SFTPAttrs,
    selection: Selection,
    walk: _Walk,
) -> None:
    """Keep a regular file, queue a folder, or tell the selection why neither."""
    mode = attrs.permissions
    if mode is not None and stat.S_ISDIR(mode):
        reason = selection.folder_skip_reason(relative)
        if reason is None:
            walk.subfolders.append(relative)
            walk.found.set()
        else:
            selection.left_out(relative + "/", reason)
        return
    if mode is None or not stat.S_ISREG(mode):
        selection.left_out(relative, "not a regular file")
        return
    size, mtime = attrs.size or 0, int(attrs.mtime or 0)
    reason = selection.file_skip_reason(relative, size, mtime)
    if reason is None:
        walk.files.append(RemoteFile(_join(remote_dir, name), size, mtime))
    else:
        selection.left_out(relative, reason)


class _LinkCheck:
    """Remote symbolic links: one to a regular file inside the listed tree is listed as
    that file, under the link's name; one to a folder, one leading outside the tree and
    a broken one are left out (never followed: no loops, nothing outside what was asked)."""

    def __init__(self, source: SSHSource, root: str) -> None:
        self.source = source
        self.root = root
        self.root_real: str | None = None

    async def resolve(self, relative: str, folder: str, name: str, walk: _Walk) -> None:
        selection = walk.selection
        remote_path = _join(folder, name)
        reason = await self._refusal(remote_path)
        if reason is not None:
            selection.left_out(relative, reason)
            return
        with contextlib.suppress(RemotePathError):
            attrs = await self.source.stat(remote_path)
            if attrs.permissions is not None and stat.S_ISDIR(attrs.permissions):
                selection.left_out(relative, "a link to a folder (not followed)")
                return
            _sort(relative, folder, name, attrs, selection, walk)
            return
        selection.left_out(relative, "a broken link")

    async def _refusal(self, remote_path: str) -> str | None:
        sftp, timeout = self.source.sftp, self.source.request_timeout
        try:
            with translate_sftp_errors(remote_path):
                async with asyncio.timeout(timeout):
                    if self.root_real is None:
                        self.root_real = str(await sftp.realpath(self.root))
                    target = str(await sftp.realpath(remote_path))
        except RemotePathError:
            return "a broken link"
        root = self.root_real.rstrip("/")
        if target == root or not target.startswith(root + "/"):
            return "a link leading outside the listed folder"
        return None


async def _settle(future: asyncio.Future[Any]) -> None:
    """Let a request that is no longer needed finish; its outcome does not matter."""
    if future.cancelled():
        return
    with contextlib.suppress(Exception):
        await future


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    """A change the server refuses (read-only, permissions, target exists): say what."""
    try:
        yield
    except asyncssh.SFTPError as exc:
        raise RemotePathError(f"{what}: {exc.reason}") from None


@contextlib.contextmanager
def translate_sftp_errors(remote_path: str) -> Iterator[None]:
    """Map SFTP status errors to dataferry errors that say which path failed."""
    try:
        yield
    except asyncssh.SFTPNoSuchFile:
        raise RemotePathError(f"remote path not found: {remote_path}") from None
    except asyncssh.SFTPPermissionDenied:
        raise RemotePathError(
            f"remote path not readable (permission denied): {remote_path}"
        ) from None
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as exc:
        raise TransientError(f"connection lost while reading {remote_path}: {exc}") from exc
    except asyncssh.SFTPFailure as exc:
        raise TransientError(f"server failed to read {remote_path}: {exc.reason}") from exc
    except asyncssh.SFTPError as exc:
        raise RemotePathError(f"cannot read remote path {remote_path}: {exc.reason}") from None
    except TimeoutError as exc:
        raise TransientError(
            f"the server did not answer a request for {remote_path} in time "
            "(request_timeout); it may be stuck"
        ) from exc
    except (ConnectionError, asyncssh.DisconnectError) as exc:
        # Network failures only: local disk errors (plain OSError) must not be retried.
        raise TransientError(
            f"connection lost while reading {remote_path}: {_reason(exc)}"
        ) from exc


_Connected = tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient, ConnectionSettings]


async def _connect(
    settings: ConnectionSettings, early: EarlyConnection | None = None
) -> _Connected:
    """Connect (through each jump host), authenticate, verify host keys and start SFTP.

    Returns the connection, its SFTP client and the target's settings as the
    ssh config resolved them. Raises ConfigError / HostKeyError /
    AuthenticationError (not retried) or TransientError.
    """
    log.debug(
        "connecting to %s (host key policy %s)", settings.describe(), settings.host_key_policy.value
    )
    opened = await open_route(settings, early)
    connection, target = opened.connection, opened.target
    try:
        # A server that accepts the subsystem but never answers its INIT.
        async with asyncio.timeout(opened.connect_timeout):
            sftp = await connection.start_sftp_client()
    except BaseException as exc:
        await _close(connection)
        if isinstance(exc, OSError | asyncssh.Error):
            raise TransientError(
                f"cannot start SFTP on {target.describe()}: {_reason(exc)}"
            ) from exc
        raise
    # Logged in: the transfer's ACKs follow the kernel's own pacing again (quick
    # ACKs throughout made 1 GiB over loopback no faster, at times slower).
    if opened.first_socket is not None:
        opened.first_socket.quick_acks = False
    log.debug(
        "connected to %s, cipher %s",
        target.describe(),
        connection.get_extra_info("send_cipher"),
    )
    return connection, sftp, target


async def _close(connection: asyncssh.SSHClientConnection) -> None:
    connection.close()
    with contextlib.suppress(OSError, asyncssh.Error):
        await connection.wait_closed()


class SSHConnector(SourceConnector):
    """Opens sessions to one server, connecting ahead of need and reusing what works.

    The command line calls :meth:`start` as soon as it knows where to connect:
    the server's part of a login (key exchange, authentication, starting SFTP:
    ~80 ms on loopback, several round trips on a far link) then overlaps the
    rest of dataferry's start-up instead of following it. The first
    :meth:`session` takes that connection, with its outcome: a failure there is
    the first try's failure, retried or not like any other. A session that
    ends well leaves its connection for the next one (the next task of
    ``--all``); one that fails closes it, and the next try logs in afresh.
    Call :meth:`aclose` when done.
    """

    def __init__(self, settings: ConnectionSettings, early: EarlyConnection | None = None):
        self.settings = settings
        self._early = early  # a TCP connection opened before asyncssh loaded
        # A connection under way (started early) or kept from the last session.
        self._next: asyncio.Future[_Connected] | None = None

    def start(self) -> None:
        """Begin connecting now, in the running event loop."""
        if self._next is None:
            early, self._early = self._early, None
            self._next = asyncio.ensure_future(_connect(self.settings, early))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[SSHSource]:
        ready, self._next = self._next, None
        if ready is not None:
            connection, sftp, target = await ready
            if connection.is_closed():  # dropped while it waited (e.g. for the task's lock)
                connection, sftp, target = await _connect(self.settings)
        else:
            connection, sftp, target = await _connect(self.settings)
        ended_well = False
        try:
            session = SSHSource(connection, sftp, target)
            try:
                yield session
            finally:
                await session.drain()
            ended_well = True
        finally:
            if ended_well and not connection.is_closed() and self._next is None:
                kept: asyncio.Future[_Connected] = asyncio.get_running_loop().create_future()
                kept.set_result((connection, sftp, target))
                self._next = kept
            else:
                await _close(connection)

    async def aclose(self) -> None:
        """Close the connection kept or started but not used."""
        if self._early is not None:
            self._early.close()
            self._early = None
        ready, self._next = self._next, None
        if ready is None:
            return
        ready.cancel()  # no-op when it has finished
        await asyncio.wait([ready])  # unlike awaiting it, leaves its error to us
        if ready.cancelled() or ready.exception() is not None:
            return  # nothing is open
        connection, _, _ = ready.result()
        await _close(connection)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
