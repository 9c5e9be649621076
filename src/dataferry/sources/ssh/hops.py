"""Opening a route: each jump host, then the target, every hop's host key verified.

asyncssh's string tunnels ("bastion,inner") connect intermediate hops with
only user, host and port: no known_hosts, no keys of ours. So each hop is
opened here with the same known_hosts and policy as the target, and passed
on as ``tunnel=``. Through a jump host the target costs what ``ssh -J``
costs: one SSH login per hop, the target's over a direct-tcpip channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncssh

from ..._connection import ConnectionSettings
from ..._exceptions import AuthenticationError, HostKeyError, TransientError, UnknownHostError
from .config import Hop, Route, resolve_route
from .keys import agent_running, load_client_keys
from .tcp import (
    CONNECT_TIMEOUT,
    EarlyConnection,
    QuickAckSocket,
    name_does_not_resolve,
    open_socket,
)

log = logging.getLogger("dataferry.ssh")


class OpenedRoute:
    """The target's connection (closing it closes the jump hosts too)."""

    def __init__(
        self,
        connection: asyncssh.SSHClientConnection,
        target: ConnectionSettings,
        first_socket: QuickAckSocket | None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.connection = connection
        self.target = target
        self.first_socket = first_socket
        # The target's ConnectTimeout (ssh_config) or the default: also the
        # deadline for starting SFTP on it.
        self.connect_timeout = connect_timeout


class _WideTunnel:
    """A jump host's connection that opens the next hop's channel with our window and
    packet size. asyncssh opens tunnel channels with its defaults (2 MiB, 32 KiB),
    which capped a far jump route at a fraction of the direct one (benchmarks.md)."""

    def __init__(self, connection: asyncssh.SSHClientConnection) -> None:
        self._connection = connection
        self.logger = connection.logger

    async def create_connection(
        self,
        session_factory: Callable[[], asyncssh.SSHTCPSession[bytes]],
        remote_host: str,
        remote_port: int,
    ) -> tuple[asyncssh.SSHTCPChannel[bytes], asyncssh.SSHTCPSession[bytes]]:
        from . import session

        return await self._connection.create_connection(
            session_factory,
            remote_host,
            remote_port,
            window=session.CHANNEL_WINDOW,
            max_pktsize=session.MAX_PACKET_SIZE,
        )


async def open_route(
    settings: ConnectionSettings,
    early: EarlyConnection | None,
) -> OpenedRoute:
    """Connect every hop of settings' route; raise dataferry errors naming the hop."""
    try:
        route = resolve_route(settings)
    except BaseException:
        if early is not None:
            early.close()
        raise
    sock = await _first_socket(route, early)
    first_socket = sock
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for hop in route.jumps:
            log.debug("connecting to jump host %s (%s)", hop.name, hop.describe())
            opened = await _open_hop(hop, settings, tunnel, sock, None, jump=True)
            opened.set_tunnel(tunnel)  # closing a hop closes the hops before it
            tunnel, sock = opened, None
        password = settings.password.get_secret_value() if settings.password else None
        connection = await _open_hop(route.target, settings, tunnel, sock, password, jump=False)
        connection.set_tunnel(tunnel)
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        elif sock is not None:
            sock.close()
        raise
    return OpenedRoute(
        connection,
        route.target.settings,
        first_socket,
        route.target.connect_timeout or CONNECT_TIMEOUT,
    )


async def _first_socket(route: Route, early: EarlyConnection | None) -> QuickAckSocket | None:
    """The TCP connection to the route's first hop: the early one when it went there."""
    first = route.first
    if first.proxy_command is not None:
        if early is not None:
            early.close()
        return None
    address = (first.settings.host, first.settings.port)
    if early is not None:
        if (early.host, early.port) == address:
            sock = await early.take()
            if sock is not None:
                log.debug("using the TCP connection opened at start-up")
                return sock
        else:
            early.close()  # the config sent us elsewhere (an alias, a jump host)
    try:
        async with asyncio.timeout(first.connect_timeout or CONNECT_TIMEOUT):
            return await open_socket(*address)
    except (OSError, TimeoutError) as exc:
        where = f"jump host {first.name} ({first.describe()})" if route.jumps else first.describe()
        if name_does_not_resolve(exc):  # a typo: one line at once, no retries
            raise UnknownHostError(
                f"cannot connect to {where}: the host name {first.settings.host!r} does not "
                f"resolve ({_reason(exc)}); check REMOTE_HOST_ADDRESS or the ssh config"
            ) from None
        raise TransientError(f"cannot connect to {where}: {_reason(exc)}") from exc


async def _open_hop(
    hop: Hop,
    settings: ConnectionSettings,
    tunnel: asyncssh.SSHClientConnection | None,
    sock: QuickAckSocket | None,
    password: str | None,
    *,
    jump: bool,
) -> asyncssh.SSHClientConnection:
    # session.py holds the host-key checker and the tuning shared with every
    # connection; imported here, as session.py imports this module.
    from . import session

    hop_settings = hop.settings
    where = f"jump host {hop.name} ({hop.describe()})" if jump else hop.describe()
    known = session._load_known_hosts(hop_settings.known_hosts)
    checker = session._HostKeyChecker(hop_settings, known)
    required = (settings.key_file,) if settings.key_file and not jump else ()
    keys = load_client_keys(
        hop.identity_files, settings.key_passphrase, hop.certificate_files, required=required
    )
    client_keys: Sequence[asyncssh.SSHKeyPair] | tuple[()] | None
    agent_path: tuple[()] | None = ()
    if password is not None and not hop.identity_files:
        # A password without a key: only the password is tried (no agent keys
        # using up the server's MaxAuthTries first).
        client_keys, agent_path = None, None
    elif hop.identity_files:
        client_keys = list(keys.keypairs) if keys.keypairs else ()
        if hop.identities_only and not keys.left_to_agent:
            agent_path = None
    else:
        client_keys = ()  # the default keys, and the agent (as ssh)
    try:
        connection = await asyncssh.connect(
            hop_settings.host,
            hop_settings.port,
            tunnel=_WideTunnel(tunnel) if tunnel is not None else (),
            sock=sock,
            proxy_command=hop.proxy_command if hop.proxy_command and sock is None else (),
            username=hop_settings.username,
            password=password,
            passphrase=(
                settings.key_passphrase.get_secret_value() if settings.key_passphrase else None
            ),
            client_keys=client_keys,
            agent_path=agent_path,
            known_hosts=known if known is not None else ([], [], []),
            client_factory=lambda: checker,
            connect_timeout=hop.connect_timeout or CONNECT_TIMEOUT,
            encryption_algs=session.CIPHER_PREFERENCE,
            compression_algs=None,
            window=session.CHANNEL_WINDOW,
            max_pktsize=session.MAX_PACKET_SIZE,
            # A link that goes silent mid-transfer is dropped (and retried) after
            # about a minute instead of hanging forever.
            keepalive_interval=hop.keepalive_interval or session.KEEPALIVE_INTERVAL,
            keepalive_count_max=3,
            config=[],
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        refusal = checker.refusal or f"host key refused: {exc.reason}"
        raise HostKeyError(f"jump host {hop.name}: {refusal}" if jump else refusal) from None
    except asyncssh.PermissionDenied:
        tried = [f"key {path}" for path in hop.identity_files]
        if password is not None:
            tried.append("password")
        if agent_path is not None and agent_running():
            tried.append("the agent's keys")
        hint = ""
        if keys.left_to_agent:
            hint = (
                f"; {', '.join(map(str, keys.left_to_agent))} is encrypted and the agent did "
                "not offer it: set SSH_KEY_PASSPHRASE or ssh-add it"
            )
        raise AuthenticationError(
            f"authentication failed for {where} (tried {' and '.join(tried) or 'default keys'})"
            f"{hint}"
        ) from None
    except asyncssh.KeyEncryptionError:
        raise AuthenticationError(
            f"{where}: SSH_KEY_PASSPHRASE does not decrypt a default key (~/.ssh/id_*)"
        ) from None
    except asyncssh.KeyImportError as exc:
        raise AuthenticationError(
            f"{where}: cannot use a default key (~/.ssh/id_*): {exc}"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise TransientError(f"cannot connect to {where}: {_reason(exc)}") from exc
    return connection


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
