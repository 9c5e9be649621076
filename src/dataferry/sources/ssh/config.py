"""The OpenSSH client config: from a host name (or alias) to a route of hops.

asyncssh's parser reads the file (Host, Match, Include, percent tokens); this
module decides what each directive means for dataferry, then every hop is
connected with explicit options (``config=[]`` in ``asyncssh.connect``), so
no directive is applied twice or behind our back. Precedence is ssh's:
settings given explicitly (environment, .env, flags) win, then the first
value the file gives, then the defaults.

Directives that would weaken host-key checking are not obeyed silently:
``StrictHostKeyChecking no`` becomes accept-new (a new key is recorded, a
changed key is still refused) and ``UserKnownHostsFile /dev/null`` or
``none`` is ignored (the default known_hosts is used); both are logged as
warnings. ``StrictHostKeyChecking accept-new`` and ``yes`` map to the
policies of the same meaning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from asyncssh.config import ConfigParseError, SSHClientConfig, SSHConfig

from ..._connection import ConnectionSettings, HostKeyPolicy, local_user
from ..._exceptions import ConfigError

log = logging.getLogger("dataferry.ssh")

# A jump chain longer than this is a loop in the config (a ProxyJump b, b ProxyJump a).
MAX_HOPS = 8
_WEAK_KNOWN_HOSTS = {"/dev/null", "none"}


class _ClientConfig(SSHClientConfig):
    """asyncssh's parser, also keeping StrictHostKeyChecking (it drops it)."""

    _handlers = {
        **SSHClientConfig._handlers,
        "stricthostkeychecking": ("StrictHostKeyChecking", SSHClientConfig._set_string),
    }


@dataclass(frozen=True)
class Hop:
    """One SSH connection of a route: a jump host or the target."""

    name: str  # as the user wrote it (an alias, or user@host:port), for messages
    settings: ConnectionSettings  # real host name, port, user, known_hosts, policy
    identity_files: tuple[Path, ...] = ()
    certificate_files: tuple[Path, ...] = ()
    identities_only: bool = False
    proxy_command: str | None = None
    connect_timeout: float | None = None
    keepalive_interval: float | None = None

    def describe(self) -> str:
        return self.settings.describe()


@dataclass(frozen=True)
class Route:
    """The jump hosts in order, then the target."""

    jumps: tuple[Hop, ...]
    target: Hop

    @property
    def direct(self) -> bool:
        """A plain TCP connection to the target (the early connection may serve)."""
        return not self.jumps and self.target.proxy_command is None

    @property
    def first(self) -> Hop:
        return self.jumps[0] if self.jumps else self.target


def resolve_route(settings: ConnectionSettings) -> Route:
    """The route to settings.host: the config's view of it and of each jump host."""
    target, config_jump = _resolve_hop(settings, settings.host, explicit=True)
    jump_spec = settings.proxy_jump if settings.proxy_jump is not None else config_jump
    origin = (
        "SSH_PROXY_JUMP" if settings.proxy_jump is not None else f"{settings.ssh_config}: ProxyJump"
    )
    jumps = _resolve_jumps(settings, jump_spec, depth=0, origin=origin)
    if jumps and target.proxy_command is not None:
        log.debug("ProxyJump wins over ProxyCommand for %s", target.name)
        target = replace(target, proxy_command=None)
    return Route(jumps, target)


def _resolve_jumps(
    settings: ConnectionSettings, spec: str | None, depth: int, origin: str
) -> tuple[Hop, ...]:
    if spec is None or spec.strip().lower() == "none":
        return ()
    hops: list[Hop] = []
    for index, part in enumerate(item.strip() for item in spec.split(",")):
        if not part:
            raise ConfigError(f"{origin} {spec!r}: an empty jump host")
        user, host, port = parse_destination(part, what=origin)
        # A jump host's user is its own (spec, config, local user), never USERNAME.
        hop_unset = set(settings.unset & {"known_hosts", "host_key_policy"})
        hop_unset |= {"port"} if port is None else set()
        hop_unset |= {"username"} if user is None else set()
        hop_settings = replace(
            settings,
            host=host,
            port=port or 22,
            username=user or local_user(),
            password=None,  # the password is the target's, never sent to a jump host
            proxy_jump=None,
            unset=frozenset(hop_unset),
        )
        hop, own_jump = _resolve_hop(hop_settings, part, explicit=False)
        if index == 0 and own_jump is not None:
            # As ssh: the first jump host's own ProxyJump is followed; later hops
            # go through the hop before them.
            if depth + 1 >= MAX_HOPS:
                raise ConfigError(f"ProxyJump: more than {MAX_HOPS} hops (a loop in the config?)")
            where = f"{settings.ssh_config}: ProxyJump of {part}"
            hops.extend(_resolve_jumps(hop_settings, own_jump, depth + 1, where))
        hops.append(hop)
    if len(hops) > MAX_HOPS:
        raise ConfigError(f"ProxyJump: more than {MAX_HOPS} hops")
    return tuple(hops)


def _resolve_hop(
    settings: ConnectionSettings, name: str, *, explicit: bool
) -> tuple[Hop, str | None]:
    """One host through the config file; returns the hop and its ProxyJump value."""
    if settings.ssh_config is None:
        key_files = (settings.key_file,) if settings.key_file else ()
        return Hop(name=name, settings=settings, identity_files=key_files), None
    config = _load(settings)
    get = config.get
    unset = settings.unset
    host = str(get("Hostname", settings.host))
    port = int(str(get("Port", settings.port))) if "port" in unset else settings.port
    username = str(get("User", settings.username)) if "username" in unset else settings.username
    known_hosts = settings.known_hosts
    if "known_hosts" in unset and get("UserKnownHostsFile") is not None:
        files = [str(item) for item in _as_list(get("UserKnownHostsFile"))]
        if not files or files[0] in _WEAK_KNOWN_HOSTS:
            log.warning(
                "%s: ignoring UserKnownHostsFile %s for %s: dataferry always verifies host "
                "keys; using %s",
                settings.ssh_config,
                files[0] if files else "none",
                name,
                settings.known_hosts,
            )
        else:
            known_hosts = Path(files[0]).expanduser()
    policy = settings.host_key_policy
    strict = get("StrictHostKeyChecking")
    if "host_key_policy" in unset and strict is not None:
        policy = _policy_from(str(strict), settings.ssh_config, name)
    identity_files = tuple(Path(str(item)).expanduser() for item in _as_list(get("IdentityFile")))
    if settings.key_file is not None:
        # SSH_KEY_FILE first (as ssh -i), then the config's; jump hosts try it too.
        rest = tuple(path for path in identity_files if path != settings.key_file)
        identity_files = (settings.key_file, *rest) if explicit else (*rest, settings.key_file)
    certificates = tuple(Path(str(item)).expanduser() for item in _as_list(get("CertificateFile")))
    proxy_command = get("ProxyCommand")
    command = None if proxy_command is None else _command_text(proxy_command)
    if command is not None and command.strip().lower() == "none":
        command = None
    timeout = get("ConnectTimeout")
    alive = get("ServerAliveInterval")
    hop_settings = replace(
        settings,
        host=host,
        port=port,
        username=username,
        known_hosts=known_hosts,
        host_key_policy=policy,
    )
    jump = get("ProxyJump")
    return (
        Hop(
            name=name,
            settings=hop_settings,
            identity_files=identity_files,
            certificate_files=certificates,
            identities_only=bool(get("IdentitiesOnly", False)),
            proxy_command=command,
            connect_timeout=float(str(timeout)) if timeout else None,
            keepalive_interval=float(str(alive)) if alive else None,
        ),
        None if jump is None else str(jump),
    )


def _load(settings: ConnectionSettings) -> SSHConfig:
    assert settings.ssh_config is not None
    unset = settings.unset
    try:
        return _ClientConfig.load(
            None,
            [settings.ssh_config],
            False,  # reload
            False,  # canonical
            False,  # final
            local_user(),
            () if "username" in unset else settings.username,
            settings.host,
            () if "port" in unset else settings.port,
        )
    except ConfigParseError as exc:
        raise ConfigError(f"SSH_CONFIG_FILE: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"SSH_CONFIG_FILE: cannot read {settings.ssh_config}: {exc.strerror or exc}"
        ) from None


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _command_text(value: object) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)


def _policy_from(value: str, config: Path | None, name: str) -> HostKeyPolicy:
    lowered = value.lower()
    if lowered in ("yes", "ask"):
        return HostKeyPolicy.STRICT
    if lowered == "accept-new":
        return HostKeyPolicy.ACCEPT_NEW
    if lowered in ("no", "off"):
        log.warning(
            "%s: StrictHostKeyChecking %s for %s is treated as accept-new: new host keys are "
            "recorded, a changed key is still refused",
            config,
            value,
            name,
        )
        return HostKeyPolicy.ACCEPT_NEW
    raise ConfigError(
        f"{config}: StrictHostKeyChecking {value} for {name}: expected yes, accept-new or no"
    )


_DESTINATION = re.compile(
    r"(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@/\[\]\s]+)(?::(?P<port>[0-9]+))?"
)


def parse_destination(text: str, *, what: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]``, as ssh -J takes them."""
    spec = text.removeprefix("ssh://").rstrip("/")
    match = _DESTINATION.fullmatch(spec)
    if match is None:
        raise ConfigError(f"{what}: {text!r} is not [user@]host[:port]")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{what}: {text!r}: port {port} is not from 1 to 65535")
    return match["user"], match["host"].strip("[]"), port
