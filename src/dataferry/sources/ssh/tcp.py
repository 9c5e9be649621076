"""The TCP connection under SSH: opened early, and acknowledged at once during the login.

No asyncssh here: the command line opens the connection before asyncssh has
loaded (~80 ms), so the TCP handshake and the server's greeting are waiting
by the time the SSH login starts (one round trip less per run on a far link).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._connection import ConnectionSettings

CONNECT_TIMEOUT = 20.0

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


# getaddrinfo's answers that no retry changes: the name does not exist, or has
# no address. EAI_AGAIN (a DNS server that did not answer) stays transient.
_NO_SUCH_NAME = frozenset(
    code
    for code in (
        getattr(socket, "EAI_NONAME", None),
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_FAIL", None),
    )
    if code is not None
)


def name_does_not_resolve(exc: BaseException) -> bool:
    """A host-name lookup failed for good (a typo in REMOTE_HOST_ADDRESS)."""
    return isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once, not up to 40 ms later.

    OpenSSH's sshd leaves Nagle's algorithm on for non-interactive sessions. It
    answers a channel open with a small debug message, then holds the small
    confirmation until that message is acknowledged, and Linux delays that
    acknowledgement by 40 ms: half of a whole login here (start_sftp_client
    took 44-49 ms without this, 3-4 ms with it; TCP_QUICKACK does not stick,
    so it is set again after every read, until SFTP has started).
    """

    quick_acks = True

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if self.quick_acks and _TCP_QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data


async def open_socket(host: str, port: int) -> QuickAckSocket:
    """Connect a TCP socket to the first address of ``host`` that accepts."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in addresses:
        sock = QuickAckSocket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


class EarlyConnection:
    """A TCP connection opened in a thread while the rest of dataferry loads.

    Best effort: if it fails, :meth:`take` returns None and the login opens
    its own connection, which reports the error as usual.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port  # a route elsewhere (ssh config) closes it unused
        self._sock: QuickAckSocket | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        # A daemon thread: a run that stops early (a config error) does not wait
        # for a slow name lookup or connection attempt.
        threading.Thread(target=self._connect, args=(host, port), daemon=True).start()

    @classmethod
    def towards(cls, settings: ConnectionSettings) -> EarlyConnection | None:
        """An early connection to where the route starts (an alias's HostName, the
        first jump host), as far as early_route can tell; None for a ProxyCommand."""
        from .early_route import first_hop_address

        address = first_hop_address(settings)
        return None if address is None else cls(*address)

    def _connect(self, host: str, port: int) -> None:
        try:
            plain = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
            sock = QuickAckSocket(plain.family, plain.type, plain.proto, plain.detach())
            sock.setblocking(False)
            with self._lock:
                if self._closed:
                    sock.close()
                else:
                    self._sock = sock
        except OSError:
            pass
        finally:
            self._done.set()

    async def take(self) -> QuickAckSocket | None:
        """The connected socket (once), or None when the early attempt failed."""
        if not self._done.is_set():
            await asyncio.to_thread(self._done.wait, CONNECT_TIMEOUT)
        with self._lock:
            sock, self._sock = self._sock, None
            self._closed = True
        return sock

    def close(self) -> None:
        """Close the socket if nobody took it (or stop waiting for it)."""
        with self._lock:
            sock, self._sock = self._sock, None
            self._closed = True
        if sock is not None:
            sock.close()
