"""Where the first TCP connection of a route goes, guessed before asyncssh loads.

The early connection (tcp.py) opens while asyncssh loads, before the real
ssh_config reading (config.py, asyncssh's parser) can run. For an alias, or
a route through a jump host, the address in REMOTE_HOST_ADDRESS is not where
the first connection goes; this reads the config's plain cases (Host blocks
with HostName, Port, ProxyJump, ProxyCommand) to aim the early connection
right. It is only a hint: the connector compares it with the real route and
closes a connection that went elsewhere, so a config this does not follow
(Match, Include, tokens) costs nothing but the early start. No asyncssh here.
"""

from __future__ import annotations

import fnmatch
import shlex

from ..._connection import ConnectionSettings

_WANTED = {"hostname", "port", "proxyjump", "proxycommand"}


def first_hop_address(settings: ConnectionSettings) -> tuple[str, int] | None:
    """(host, port) the route's first TCP connection goes to; None when it has
    none (ProxyCommand) or the config is beyond this guess."""
    if settings.ssh_config is None:
        return _jump_or_target(settings.proxy_jump, settings.host, settings.port, None)
    try:
        text = settings.ssh_config.read_text(errors="replace")
    except OSError:
        return settings.host, settings.port
    blocks = _blocks(text)
    if blocks is None:
        return settings.host, settings.port  # the plain guess, as before
    options = _options_for(blocks, settings.host)
    port = settings.port
    if "port" in settings.unset and "port" in options:
        if not options["port"].isdigit():
            return None
        port = int(options["port"])
    host = options.get("hostname", settings.host).replace("%h", settings.host)
    jump = settings.proxy_jump if settings.proxy_jump is not None else options.get("proxyjump")
    direct = jump is None or jump.strip().lower() == "none"
    if direct and options.get("proxycommand", "none").lower() != "none":
        return None  # the first "connection" is a command's stdin and stdout
    return _jump_or_target(jump, host, port, blocks)


def _jump_or_target(
    jump: str | None, host: str, port: int, blocks: list[tuple[list[str], dict[str, str]]] | None
) -> tuple[str, int] | None:
    if jump is None or jump.strip().lower() == "none":
        return host, port
    first = jump.split(",")[0].strip().removeprefix("ssh://")
    first = first.rsplit("@", 1)[-1]
    jump_port: int | None = None
    if first.startswith("["):
        name, _, rest = first[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            jump_port = int(rest[1:])
    else:
        name, _, port_text = first.partition(":")
        if port_text:
            if not port_text.isdigit():
                return None
            jump_port = int(port_text)
    if blocks is None:
        return name, jump_port or 22
    options = _options_for(blocks, name)
    if "proxyjump" in options or "proxycommand" in options:
        return None  # a chain to the jump host: beyond the guess
    if jump_port is None and "port" in options:
        if not options["port"].isdigit():
            return None
        jump_port = int(options["port"])
    return options.get("hostname", name).replace("%h", name), jump_port or 22


def _blocks(text: str) -> list[tuple[list[str], dict[str, str]]] | None:
    """Host blocks as (patterns, first values); None for what only the real parser reads."""
    blocks: list[tuple[list[str], dict[str, str]]] = [(["*"], {})]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.replace("=", " ", 1).partition(" ")
        keyword, value = keyword.lower(), value.strip()
        if keyword in ("match", "include"):
            return None
        if keyword in _WANTED and keyword != "proxycommand" and "%" in value.replace("%h", ""):
            return None  # tokens only the real parser expands
        if keyword == "host":
            try:
                patterns = shlex.split(value)
            except ValueError:
                return None
            blocks.append((patterns, {}))
        elif keyword in _WANTED:
            blocks[-1][1].setdefault(keyword, value)
    return blocks


def _options_for(blocks: list[tuple[list[str], dict[str, str]]], host: str) -> dict[str, str]:
    """First value of each option among the blocks matching host, in file order."""
    found: dict[str, str] = {}
    for patterns, options in blocks:
        if _matches(patterns, host):
            for key, value in options.items():
                found.setdefault(key, value)
    return found


def _matches(patterns: list[str], host: str) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(host, pattern.removeprefix("!")):
            if negated:
                return False
            matched = True
    return matched
