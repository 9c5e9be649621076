"""The OpenSSH client config: aliases, precedence, jump specs, weakening directives.

Unit tests resolve routes from config files (no network); the end-to-end
ones run the command line against the real sshd through an alias.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from dataferry._connection import (
    ENV_VARIABLES,
    ConnectionSettings,
    HostKeyPolicy,
    resolve_connection,
)
from dataferry._exceptions import ConfigError
from dataferry.sources.ssh.config import parse_destination, resolve_route
from dataferry.sources.ssh.early_route import first_hop_address
from tests.support.remote import run_args, run_cli
from tests.support.sshd import OpenSSHServer


def _settings(config: Path, **env: str) -> ConnectionSettings:
    return resolve_connection({"SSH_CONFIG_FILE": str(config), **env})


def test_alias_gives_hostname_user_port_and_identity(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host data\n  HostName 10.1.2.3\n  User alice\n  Port 2222\n"
        "  IdentityFile ~/keys/%r_key\n  ConnectTimeout 7\n  ServerAliveInterval 9\n"
    )
    route = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data"))
    target = route.target.settings
    assert (target.host, target.port, target.username) == ("10.1.2.3", 2222, "alice")
    assert route.target.identity_files == (Path("~/keys/alice_key").expanduser(),)
    assert (route.target.connect_timeout, route.target.keepalive_interval) == (7.0, 9.0)
    assert route.direct and route.target.name == "data"


def test_explicit_settings_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host data\n  User alice\n  Port 2222\n  UserKnownHostsFile /tmp/kh\n")
    settings = _settings(
        config,
        REMOTE_HOST_ADDRESS="data",
        USERNAME="bob",
        REMOTE_PORT="22",
        SSH_KNOWN_HOSTS=str(tmp_path / "mine"),
    )
    target = resolve_route(settings).target.settings
    assert (target.username, target.port, target.known_hosts) == ("bob", 22, tmp_path / "mine")
    unset = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data")).target.settings
    assert (unset.username, unset.port, unset.known_hosts) == ("alice", 2222, Path("/tmp/kh"))


def test_first_value_wins_include_and_match(tmp_path: Path) -> None:
    (tmp_path / "extra").write_text("Host data\n  Port 2200\n")
    config = tmp_path / "config"
    config.write_text(
        f"Include {tmp_path / 'extra'}\n"
        "Match originalhost data\n  User matched\n"
        "Host *\n  Port 1\n  User fallback\n"
    )
    target = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data")).target.settings
    assert (target.port, target.username) == (2200, "matched")
    other = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="elsewhere")).target.settings
    assert (other.host, other.port, other.username) == ("elsewhere", 1, "fallback")


def test_username_falls_back_to_the_local_user(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host other\n  User someone\n")
    target = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data")).target.settings
    assert target.username == pwd.getpwuid(os.getuid()).pw_name


def test_proxy_jump_chain_each_hop_through_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host data\n  HostName 10.0.0.9\n  ProxyJump bastion,carol@inner:2022\n"
        "Host bastion\n  HostName bastion.example.org\n  User jumper\n  ProxyJump outer\n"
        "Host inner\n  HostName 10.0.0.5\n  ProxyJump ignored\n"
        "Host outer\n  HostName 192.0.2.1\n"
    )
    route = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data", USERNAME="me"))
    hops = [
        (hop.name, hop.settings.host, hop.settings.port, hop.settings.username)
        for hop in route.jumps
    ]
    local = pwd.getpwuid(os.getuid()).pw_name
    # outer: the first jump host's own ProxyJump; inner's own is not followed (as ssh -J).
    assert hops == [
        ("outer", "192.0.2.1", 22, local),
        ("bastion", "bastion.example.org", 22, "jumper"),
        ("carol@inner:2022", "10.0.0.5", 2022, "carol"),
    ]
    assert route.target.settings.username == "me" and not route.direct
    assert all(hop.settings.password is None for hop in route.jumps)


def test_ssh_proxy_jump_variable_wins_and_none_disables(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host data\n  ProxyJump bastion\n")
    given = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data", SSH_PROXY_JUMP="j1:2200"))
    assert [(hop.settings.host, hop.settings.port) for hop in given.jumps] == [("j1", 2200)]
    assert resolve_route(
        _settings(config, REMOTE_HOST_ADDRESS="data", SSH_PROXY_JUMP="none")
    ).direct


def test_proxy_command_is_a_route_of_its_own(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host data\n  ProxyCommand nc -q0 %h %p\n  HostName 10.9.9.9\n")
    route = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data"))
    assert route.target.proxy_command == "nc -q0 10.9.9.9 22" and not route.direct


def test_a_jump_loop_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(ConfigError, match="more than 8 hops"):
        resolve_route(_settings(config, REMOTE_HOST_ADDRESS="a"))


def test_weakening_directives_are_not_obeyed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host lab\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        "Host strict\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile none\n"
    )
    caplog.set_level("WARNING")
    lab = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="lab")).target.settings
    assert lab.host_key_policy is HostKeyPolicy.ACCEPT_NEW
    assert lab.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    text = caplog.text
    assert "StrictHostKeyChecking no" in text and "a changed key is still refused" in text
    assert "ignoring UserKnownHostsFile /dev/null" in text
    strict = resolve_route(_settings(config, REMOTE_HOST_ADDRESS="strict")).target.settings
    assert strict.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    # SSH_HOST_KEY_POLICY given explicitly wins over the file.
    explicit = _settings(config, REMOTE_HOST_ADDRESS="lab", SSH_HOST_KEY_POLICY="strict")
    assert resolve_route(explicit).target.settings.host_key_policy is HostKeyPolicy.STRICT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", (None, "host", None)),
        ("u@host:2200", ("u", "host", 2200)),
        ("ssh://u@[::1]:22", ("u", "::1", 22)),
    ],
)
def test_parse_destination(text: str, expected: tuple[str | None, str, int | None]) -> None:
    assert parse_destination(text, what="ProxyJump") == expected


def test_bad_config_values_are_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host data\n  Port many\n")
    with pytest.raises(ConfigError, match=r"SSH_CONFIG_FILE: .*line 2"):
        resolve_route(_settings(config, REMOTE_HOST_ADDRESS="data"))
    with pytest.raises(ConfigError, match="SSH_CONFIG_FILE: no such file"):
        _settings(tmp_path / "missing", REMOTE_HOST_ADDRESS="data")
    with pytest.raises(ConfigError, match="SSH_PROXY_JUMP: 'a b' is not"):
        resolve_route(_settings(config, REMOTE_HOST_ADDRESS="x", SSH_PROXY_JUMP="a b"))


# End to end, through the real sshd.


def _alias_env(server: OpenSSHServer, tmp_path: Path, config_text: str) -> dict[str, str]:
    config = tmp_path / "ssh_config"
    config.write_text(config_text)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ENV_VARIABLES and key != "SSH_AUTH_SOCK"
    }
    env.update(REMOTE_HOST_ADDRESS="dataset-box", SSH_CONFIG_FILE=str(config))
    env["HOME"] = str(tmp_path / "home")
    return env


def _alias_block(server: OpenSSHServer, known_hosts: str) -> str:
    return (
        f"Host dataset-box\n  HostName {server.host}\n  Port {server.port}\n"
        f"  User {server.username}\n  IdentityFile {server.client_key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
    )


def _fetch(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    remote = tmp_path / "remote.csv"
    remote.write_text("a\n1\n")
    return run_cli(run_args(tmp_path / "got.csv", str(remote), "--max_tries", "1"), env, tmp_path)


def test_alias_with_user_port_and_identity_file(sshd_server: OpenSSHServer, tmp_path: Path) -> None:
    known = sshd_server.write_known_hosts(tmp_path / "kh")
    result = _fetch(
        _alias_env(sshd_server, tmp_path, _alias_block(sshd_server, str(known))), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.csv").read_text() == "a\n1\n"


def test_strict_checking_off_in_the_file_still_refuses_a_changed_key(
    sshd_server: OpenSSHServer, tmp_path: Path
) -> None:
    known = tmp_path / "kh"
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    assert other.returncode == 0
    fake = Path(f"{tmp_path / 'other'}.pub").read_text().split()[:2]
    known.write_text(f"[{sshd_server.host}]:{sshd_server.port} {' '.join(fake)}\n")
    block = _alias_block(sshd_server, str(known)) + "  StrictHostKeyChecking no\n"
    result = _fetch(_alias_env(sshd_server, tmp_path, block), tmp_path)
    assert result.returncode == 3, result.stderr
    assert "has CHANGED" in result.stderr and "StrictHostKeyChecking no" in result.stderr
    assert not (tmp_path / "got.csv").exists()


def test_known_hosts_dev_null_is_ignored_and_checking_stays_on(
    sshd_server: OpenSSHServer, tmp_path: Path
) -> None:
    block = _alias_block(sshd_server, "/dev/null")
    result = _fetch(_alias_env(sshd_server, tmp_path, block), tmp_path)
    assert result.returncode == 3, result.stderr
    assert "ignoring UserKnownHostsFile /dev/null" in result.stderr
    assert "is not known" in result.stderr


# The early connection's guess (no asyncssh) agrees with the real route.

EARLY_CONFIG = """
Host data
    HostName 10.1.1.1
    Port 2200
Host via-jump
    HostName 10.2.2.2
    ProxyJump bastion,inner:2022
Host bastion
    HostName 192.0.2.7
    Port 2222
Host chained
    ProxyJump hop1
Host hop1
    ProxyJump hop0
Host piped
    ProxyCommand nc %h %p
Host *.example.org !skip.example.org
    Port 2345
"""


@pytest.mark.parametrize(
    ("host", "env", "expected"),
    [
        ("data", {}, ("10.1.1.1", 2200)),
        ("data", {"REMOTE_PORT": "22"}, ("10.1.1.1", 22)),
        ("via-jump", {}, ("192.0.2.7", 2222)),
        ("data", {"SSH_PROXY_JUMP": "u@[::1]:2022"}, ("::1", 2022)),
        ("via-jump", {"SSH_PROXY_JUMP": "none"}, ("10.2.2.2", 22)),
        ("a.example.org", {}, ("a.example.org", 2345)),
        ("skip.example.org", {}, ("skip.example.org", 22)),
        ("plain", {}, ("plain", 22)),
        ("piped", {}, None),
        ("chained", {}, None),
    ],
)
def test_early_connection_goes_where_the_route_starts(
    tmp_path: Path, host: str, env: dict[str, str], expected: tuple[str, int] | None
) -> None:
    config = tmp_path / "config"
    config.write_text(EARLY_CONFIG)
    settings = _settings(config, REMOTE_HOST_ADDRESS=host, **env)
    assert first_hop_address(settings) == expected
    first = resolve_route(settings).first
    if expected is not None:
        assert (first.settings.host, first.settings.port) == expected
        assert first.proxy_command is None


def test_early_guess_falls_back_for_match_and_include(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Match host data\n  HostName 10.1.1.1\n")
    settings = _settings(config, REMOTE_HOST_ADDRESS="data")
    assert first_hop_address(settings) == ("data", 22)  # a guess only: closed if wrong


def test_alias_uses_the_early_connection(sshd_server: OpenSSHServer, tmp_path: Path) -> None:
    known = sshd_server.write_known_hosts(tmp_path / "kh")
    env = _alias_env(sshd_server, tmp_path, _alias_block(sshd_server, str(known)))
    result = _fetch_debug(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using the TCP connection opened at start-up" in result.stderr


def _fetch_debug(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    remote = tmp_path / "remote.csv"
    remote.write_text("a\n1\n")
    args = run_args(tmp_path / "got.csv", str(remote), "--max_tries", "1", "--log-level", "DEBUG")
    return run_cli(args, env, tmp_path)
