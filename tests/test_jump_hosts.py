"""Jump hosts against real OpenSSH servers: the target sits in a network
namespace and only the jump host's address is reachable from here
(tests/support/jump.py), so a file that arrives has crossed the jump host.
Every hop's host key is checked against the same known_hosts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dataferry._connection import ENV_VARIABLES
from tests.support.jump import JumpNetwork
from tests.support.remote import random_bytes, run_args, run_cli

PAYLOAD = random_bytes(300_000, seed=11)


def _env(net: JumpNetwork, tmp_path: Path, **values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ENV_VARIABLES and key != "SSH_AUTH_SOCK"
    }
    env.update(
        REMOTE_HOST_ADDRESS=net.target.host,
        REMOTE_PORT=str(net.target.port),
        USERNAME=net.username,
        SSH_KEY_FILE=str(net.client_key),
        SSH_KNOWN_HOSTS=str(net.known_hosts(tmp_path / "known_hosts")),
        SSH_CONFIG_FILE="none",
        HOME=str(tmp_path / "home"),
    )
    env.update(values)
    return env


def _jump(net: JumpNetwork) -> str:
    return f"{net.jump.host}:{net.jump.port}"


def _fetch(env: dict[str, str], tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    remote = tmp_path / "remote.bin"
    remote.write_bytes(PAYLOAD)
    args = run_args(tmp_path / "got.bin", str(remote), "--max_tries", "1", *extra)
    return run_cli(args, env, tmp_path)


def test_target_is_not_reachable_without_the_jump_host(
    jump_net: JumpNetwork, tmp_path: Path
) -> None:
    result = _fetch(_env(jump_net, tmp_path), tmp_path)
    # Our 127.0.0.1 is not the namespace's: nothing (or another server) answers there.
    assert result.returncode in (3, 5), result.stderr
    assert not (tmp_path / "got.bin").exists()


def test_through_a_jump_host_from_the_environment(jump_net: JumpNetwork, tmp_path: Path) -> None:
    result = _fetch(_env(jump_net, tmp_path, SSH_PROXY_JUMP=_jump(jump_net)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.bin").read_bytes() == PAYLOAD


def test_through_an_alias_with_proxy_jump_in_the_config(
    jump_net: JumpNetwork, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host data\n  HostName {jump_net.target.host}\n  Port {jump_net.target.port}\n"
        f"  User {jump_net.username}\n  IdentityFile {jump_net.client_key}\n"
        "  ProxyJump bastion\n"
        f"Host bastion\n  HostName {jump_net.jump.host}\n  Port {jump_net.jump.port}\n"
        f"  IdentityFile {jump_net.client_key}\n"
    )
    env = _env(jump_net, tmp_path, REMOTE_HOST_ADDRESS="data", SSH_CONFIG_FILE=str(config))
    for key in ("REMOTE_PORT", "USERNAME", "SSH_KEY_FILE"):
        del env[key]
    result = _fetch(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.bin").read_bytes() == PAYLOAD


def test_two_hop_chain(jump_net: JumpNetwork, tmp_path: Path) -> None:
    chain = f"{_jump(jump_net)},{jump_net.inner.host}:{jump_net.inner.port}"
    result = _fetch(_env(jump_net, tmp_path, SSH_PROXY_JUMP=chain), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.bin").read_bytes() == PAYLOAD


def test_unknown_key_on_the_jump_host_is_refused_and_named(
    jump_net: JumpNetwork, tmp_path: Path
) -> None:
    env = _env(jump_net, tmp_path, SSH_PROXY_JUMP=_jump(jump_net))
    jump_net.known_hosts(Path(env["SSH_KNOWN_HOSTS"]), skip=("jump",))
    result = _fetch(env, tmp_path)
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0, result.stderr
    assert f"jump host {_jump(jump_net)}:" in line and "is not known" in line
    assert not (tmp_path / "got.bin").exists()


def test_changed_key_on_the_jump_host_is_refused_and_named(
    jump_net: JumpNetwork, tmp_path: Path
) -> None:
    env = _env(jump_net, tmp_path, SSH_PROXY_JUMP=_jump(jump_net))
    known = jump_net.known_hosts(Path(env["SSH_KNOWN_HOSTS"]), skip=("jump",))
    # The jump host's entry carries another server's key: a changed key.
    jump_entry = f"[{jump_net.jump.host}]:{jump_net.jump.port}"
    known.write_text(known.read_text() + f"{jump_entry} {jump_net.target.host_public_key}\n")
    result = _fetch(env, tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"jump host {_jump(jump_net)}:" in result.stderr and "CHANGED" in result.stderr


def test_unknown_key_on_the_second_hop_is_named(jump_net: JumpNetwork, tmp_path: Path) -> None:
    inner = f"{jump_net.inner.host}:{jump_net.inner.port}"
    env = _env(jump_net, tmp_path, SSH_PROXY_JUMP=f"{_jump(jump_net)},{inner}")
    jump_net.known_hosts(Path(env["SSH_KNOWN_HOSTS"]), skip=("inner",))
    result = _fetch(env, tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"jump host {inner}:" in result.stderr and "is not known" in result.stderr


def test_accept_new_records_every_hop(jump_net: JumpNetwork, tmp_path: Path) -> None:
    env = _env(jump_net, tmp_path, SSH_PROXY_JUMP=_jump(jump_net), SSH_HOST_KEY_POLICY="accept-new")
    known = Path(env["SSH_KNOWN_HOSTS"])
    known.write_text("")
    result = _fetch(env, tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = known.read_text()
    assert jump_net.jump.known_hosts_line() in recorded
    assert jump_net.target.known_hosts_line() in recorded


def test_proxy_command(jump_net: JumpNetwork, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host data\n"
        f"  HostName {jump_net.target.host}\n  Port {jump_net.target.port}\n"
        f"  ProxyCommand ssh -q -o BatchMode=yes -o StrictHostKeyChecking=yes"
        f" -o UserKnownHostsFile={known} -i {jump_net.client_key} -p {jump_net.jump.port}"
        f" -W %h:%p {jump_net.username}@{jump_net.jump.host}\n"
    )
    env = _env(jump_net, tmp_path, REMOTE_HOST_ADDRESS="data", SSH_CONFIG_FILE=str(config))
    del env["REMOTE_PORT"]
    result = _fetch(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.bin").read_bytes() == PAYLOAD


def test_authentication_failure_on_the_jump_host_is_named(
    jump_net: JumpNetwork, tmp_path: Path
) -> None:
    jump = f"nobody-here@{_jump(jump_net)}"
    result = _fetch(_env(jump_net, tmp_path, SSH_PROXY_JUMP=jump), tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"authentication failed for jump host {jump}" in result.stderr


def test_get_through_an_alias_behind_the_jump_host(jump_net: JumpNetwork, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host inside\n  HostName {jump_net.target.host}\n  Port {jump_net.target.port}\n"
        f"  ProxyJump {jump_net.username}@{_jump(jump_net)}\n"
    )
    env = _env(jump_net, tmp_path, SSH_CONFIG_FILE=str(config))
    for key in ("REMOTE_HOST_ADDRESS", "REMOTE_PORT", "USERNAME"):
        del env[key]
    remote = tmp_path / "remote.bin"
    remote.write_bytes(PAYLOAD)
    result = run_cli(["-m", "dataferry", "get", f"inside:{remote}", "fetched/"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fetched" / "remote.bin").read_bytes() == PAYLOAD


def test_early_connection_goes_to_the_jump_host(jump_net: JumpNetwork, tmp_path: Path) -> None:
    env = _env(jump_net, tmp_path, SSH_PROXY_JUMP=_jump(jump_net))
    result = _fetch(env, tmp_path, "--log-level", "DEBUG")
    assert result.returncode == 0, result.stderr
    assert "using the TCP connection opened at start-up" in result.stderr
    assert f"connecting to jump host {_jump(jump_net)}" in result.stderr
