"""Connection settings: where and how to connect, from the environment and ./.env.

Deliberately free of pydantic: the command line resolves these first and starts
connecting while the rest of dataferry (task settings, pydantic, extraction)
loads, so this module must import in microseconds. The variables are checked
by hand with the same one-line errors as the task settings. The OpenSSH client
config (SSH_CONFIG_FILE) is read later, by sources/ssh/config.py: ``unset``
names the settings it may still fill in (explicit ones win, as on ssh's
command line).
"""

from __future__ import annotations

import enum
import json
import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import ConfigError


class HostKeyPolicy(enum.StrEnum):
    STRICT = "strict"
    ACCEPT_NEW = "accept-new"


@dataclass(frozen=True)
class Secret:
    """A password: never shown by ``repr``, ``str`` or log formatting."""

    value: str = field(repr=False)

    def get_secret_value(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "**********"


def _default_known_hosts() -> Path:
    return Path("~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect. Built from the environment and ./.env."""

    host: str
    username: str
    port: int = 22
    password: Secret | None = None
    key_file: Path | None = None
    known_hosts: Path = field(default_factory=_default_known_hosts)
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    # Decrypts SSH_KEY_FILE (and the config's IdentityFile keys); never shown.
    key_passphrase: Secret | None = None
    # The OpenSSH client config to read (Host aliases, ProxyJump, ...); None: none.
    ssh_config: Path | None = None
    # Jump hosts, as ssh -J: "[user@]host[:port],..."; "none" ignores the config's.
    proxy_jump: str | None = None
    # Settings given by default, not explicitly ("username", "port", "known_hosts",
    # "host_key_policy"): the ssh config may set them.
    unset: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not from 1 to 65535")
        # Accept the plain strings a caller may pass; store the enum.
        object.__setattr__(self, "host_key_policy", HostKeyPolicy(self.host_key_policy))

    def describe(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


ENV_VARIABLES = (
    "REMOTE_HOST_ADDRESS",
    "REMOTE_PORT",
    "USERNAME",
    "PASSWORD",
    "SSH_KEY_FILE",
    "SSH_KNOWN_HOSTS",
    "SSH_HOST_KEY_POLICY",
    "SSH_KEY_PASSPHRASE",
    "SSH_CONFIG_FILE",
    "SSH_PROXY_JUMP",
)
_PORT = re.compile(r"[0-9]{1,5}")


def read_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """The .env file's variables, overridden by those already in the environment."""
    merged: dict[str, str] = {}
    if env_file.is_file():
        # Imported here: ~10 ms of start-up, wasted when there is no .env.
        from dotenv import dotenv_values

        for key, value in dotenv_values(env_file).items():
            if value is not None:
                merged[key] = value
    for key in ENV_VARIABLES:
        if key in os.environ:
            merged[key] = os.environ[key]
    return merged


def resolve_connection(
    environment: Mapping[str, str] | None = None, *, source: str = "environment or .env"
) -> ConnectionSettings:
    """Validate the connection variables; every problem is a one-line ConfigError."""
    env = read_environment() if environment is None else environment

    def value(variable: str) -> str | None:
        raw = env.get(variable, "")
        return raw.strip() or None

    def invalid(variable: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {variable}: {message}, got {json.dumps(env[variable])}")

    def required(variable: str) -> str:
        given = value(variable)
        if given is None:
            raise ConfigError(
                f"{variable} is not set ({source}); copy .env.example to .env and fill it in"
            )
        return given

    host = required("REMOTE_HOST_ADDRESS")
    unset: set[str] = set()
    username = value("USERNAME")
    if username is None:
        # As ssh: the config's User (applied later), else the local user.
        unset.add("username")
        username = local_user()
    port = 22
    raw_port = value("REMOTE_PORT")
    if raw_port is not None:
        if not _PORT.fullmatch(raw_port) or not 1 <= int(raw_port) <= 65535:
            raise invalid("REMOTE_PORT", "expected a port number from 1 to 65535")
        port = int(raw_port)
    else:
        unset.add("port")
    policy = HostKeyPolicy.STRICT
    raw_policy = value("SSH_HOST_KEY_POLICY")
    if raw_policy is not None:
        try:
            policy = HostKeyPolicy(raw_policy.lower())
        except ValueError:
            raise invalid("SSH_HOST_KEY_POLICY", "expected strict or accept-new") from None
    else:
        unset.add("host_key_policy")
    # The password is taken as written (spaces included) and never shown.
    password = env.get("PASSWORD", "")
    raw_key, raw_known = value("SSH_KEY_FILE"), value("SSH_KNOWN_HOSTS")
    key_file = Path(raw_key).expanduser() if raw_key else None
    if key_file is not None and not key_file.is_file():
        raise ConfigError(f"{source}: SSH_KEY_FILE: no such file: {key_file}")
    if key_file is not None and _is_public_key(key_file):
        raise ConfigError(
            f"{source}: SSH_KEY_FILE: {key_file} is a public key; give the private key "
            f"file{_private_hint(key_file)}"
        )
    if raw_known is None:
        unset.add("known_hosts")
    passphrase = env.get("SSH_KEY_PASSPHRASE", "")
    return ConnectionSettings(
        host=host,
        username=username,
        port=port,
        password=Secret(password) if password.strip() else None,
        key_file=key_file,
        known_hosts=Path(raw_known).expanduser() if raw_known else _default_known_hosts(),
        host_key_policy=policy,
        key_passphrase=Secret(passphrase) if passphrase else None,
        ssh_config=_ssh_config_file(value("SSH_CONFIG_FILE"), source),
        proxy_jump=value("SSH_PROXY_JUMP"),
        unset=frozenset(unset),
    )


def local_user() -> str:
    """The login name of this process's user, as ssh finds it (not $USER or $USERNAME:
    USERNAME is dataferry's setting for the server)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise ConfigError(
            "USERNAME is not set and the local user has no name (uid "
            f"{os.getuid()} is not in the password database); set USERNAME"
        ) from None


def _ssh_config_file(raw: str | None, source: str) -> Path | None:
    """SSH_CONFIG_FILE, "none" for no file; by default ~/.ssh/config when it exists."""
    if raw is None:
        default = Path("~/.ssh/config").expanduser()
        return default if default.is_file() else None
    if raw.lower() == "none":
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: SSH_CONFIG_FILE: no such file: {path}")
    return path


_PUBLIC_KEY_STARTS = (b"ssh-", b"ecdsa-", b"sk-", b"---- BEGIN SSH2 PUBLIC KEY")


def _is_public_key(path: Path) -> bool:
    """True for an OpenSSH or RFC 4716 public key (a common slip: id_ed25519.pub)."""
    try:
        with path.open("rb") as handle:
            start = handle.read(64).lstrip()
    except OSError:
        return False  # reported when the key is loaded
    return start.startswith(_PUBLIC_KEY_STARTS)


def _private_hint(path: Path) -> str:
    private = path.with_suffix("") if path.suffix == ".pub" else None
    return f" ({private}?)" if private is not None and private.is_file() else ""
