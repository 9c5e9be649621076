"""Keys against a real sshd: passphrases, the agent, mistakes reported in one line.

Each scenario runs the command line as a user would; the server accepts the
keys made here (appended to its authorized_keys).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataferry._connection import ENV_VARIABLES
from dataferry._exceptions import ConfigError
from dataferry.sources.ssh.keys import load_client_keys
from tests.support.jump import Agent, ssh_agent
from tests.support.remote import run_args, run_cli
from tests.support.sshd import OpenSSHServer, running_sshd, sshd_available

PASSPHRASE = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSHServer]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("sshd-keys")) as started:
        yield started


@pytest.fixture(scope="module")
def encrypted_key(server: OpenSSHServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "id_encrypted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(key)], check=True
    )
    with (server.workdir / "authorized_keys").open("a") as authorized:
        authorized.write(Path(f"{key}.pub").read_text())
    return key


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with ssh_agent(tmp_path / "agent") as started:
        yield started


def _env(server: OpenSSHServer, tmp_path: Path, **values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ENV_VARIABLES and key != "SSH_AUTH_SOCK"
    }
    env.update(
        REMOTE_HOST_ADDRESS=server.host,
        REMOTE_PORT=str(server.port),
        USERNAME=server.username,
        SSH_KNOWN_HOSTS=str(server.write_known_hosts(tmp_path / "known_hosts")),
        SSH_CONFIG_FILE="none",
        HOME=str(tmp_path / "home"),  # no default keys of the machine's
    )
    env.update(values)
    return env


def _fetch(
    server: OpenSSHServer, tmp_path: Path, **values: str
) -> subprocess.CompletedProcess[str]:
    remote = tmp_path / "remote.csv"
    remote.write_text("a,b\n1,2\n")
    return run_cli(
        run_args(tmp_path / "out" / "data.csv", str(remote)),
        _env(server, tmp_path, **values),
        tmp_path,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dataferry: error: "), result.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_encrypted_key_with_its_passphrase(
    server: OpenSSHServer, encrypted_key: Path, tmp_path: Path
) -> None:
    result = _fetch(
        server, tmp_path, SSH_KEY_FILE=str(encrypted_key), SSH_KEY_PASSPHRASE=PASSPHRASE
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "data.csv").read_text() == "a,b\n1,2\n"
    assert PASSPHRASE not in result.stdout + result.stderr


def test_wrong_passphrase_is_one_line_exit_3(
    server: OpenSSHServer, encrypted_key: Path, tmp_path: Path
) -> None:
    result = _fetch(
        server, tmp_path, SSH_KEY_FILE=str(encrypted_key), SSH_KEY_PASSPHRASE="not it at all"
    )
    assert result.returncode == 3, result.stderr
    line = _one_error_line(result)
    assert str(encrypted_key) in line and "wrong passphrase" in line
    assert "not it at all" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_encrypted_key_without_passphrase_or_agent_says_what_to_do(
    server: OpenSSHServer, encrypted_key: Path, tmp_path: Path
) -> None:
    result = _fetch(server, tmp_path, SSH_KEY_FILE=str(encrypted_key))
    assert result.returncode == 3, result.stderr
    line = _one_error_line(result)
    assert "is encrypted: set SSH_KEY_PASSPHRASE" in line and "ssh-add" in line


def test_public_key_as_key_file_is_exit_2(
    server: OpenSSHServer, encrypted_key: Path, tmp_path: Path
) -> None:
    result = _fetch(server, tmp_path, SSH_KEY_FILE=f"{encrypted_key}.pub")
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert "is a public key" in line and f"({encrypted_key}?)" in line


def test_not_a_key_at_all_is_exit_2(server: OpenSSHServer, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello\n")
    result = _fetch(server, tmp_path, SSH_KEY_FILE=str(bogus))
    assert result.returncode == 2, result.stderr
    assert "not a private key" in _one_error_line(result)


def test_agent_supplies_the_encrypted_key(
    server: OpenSSHServer, encrypted_key: Path, agent: Agent, tmp_path: Path
) -> None:
    agent.add(encrypted_key, PASSPHRASE)
    # SSH_KEY_FILE set, no passphrase: the agent holds the key, as ssh would use it.
    result = _fetch(
        server, tmp_path, SSH_KEY_FILE=str(encrypted_key), SSH_AUTH_SOCK=str(agent.socket)
    )
    assert result.returncode == 0, result.stderr


def test_agent_alone_without_any_key_file(
    server: OpenSSHServer, encrypted_key: Path, agent: Agent, tmp_path: Path
) -> None:
    agent.add(encrypted_key, PASSPHRASE)
    result = _fetch(server, tmp_path, SSH_AUTH_SOCK=str(agent.socket))
    assert result.returncode == 0, result.stderr


def test_agent_without_the_key_fails_with_a_hint(
    server: OpenSSHServer, encrypted_key: Path, agent: Agent, tmp_path: Path
) -> None:
    result = _fetch(
        server, tmp_path, SSH_KEY_FILE=str(encrypted_key), SSH_AUTH_SOCK=str(agent.socket)
    )
    assert result.returncode == 3, result.stderr
    line = _one_error_line(result)
    assert "authentication failed" in line and "the agent did not offer it" in line


def test_username_defaults_to_the_local_user(server: OpenSSHServer, tmp_path: Path) -> None:
    env = _env(server, tmp_path, SSH_KEY_FILE=str(server.client_key))
    del env["USERNAME"]
    remote = tmp_path / "remote.csv"
    remote.write_text("x\n")
    result = run_cli(run_args(tmp_path / "got.csv", str(remote)), env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.csv").read_text() == "x\n"


@pytest.fixture(scope="module")
def ca_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OpenSSHServer, Path, Path]]:
    """An sshd trusting user certificates signed by a CA made here; returns the
    server, the CA's private key and a folder for keys."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    keys = tmp_path_factory.mktemp("ca")
    ca = keys / "user_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    workdir = tmp_path_factory.mktemp("sshd-ca")
    with running_sshd(workdir, [f"TrustedUserCAKeys {ca}.pub"]) as started:
        yield started, ca, keys


def _signed_key(ca: Path, folder: Path, principal: str, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", name, "-n", principal, f"{key}.pub"],
        check=True,
        capture_output=True,
    )
    assert Path(f"{key}-cert.pub").is_file()
    return key


def test_certificate_beside_the_key(
    ca_server: tuple[OpenSSHServer, Path, Path], tmp_path: Path
) -> None:
    server, ca, folder = ca_server
    key = _signed_key(ca, folder, server.username, "beside")
    assert _fetch(server, tmp_path, SSH_KEY_FILE=str(key)).returncode == 0
    # The same key without its certificate is not authorized: the certificate did it.
    Path(f"{key}-cert.pub").unlink()
    refused = _fetch(server, tmp_path, SSH_KEY_FILE=str(key), SSH_AUTH_SOCK="")
    assert refused.returncode == 3, refused.stderr
    assert "authentication failed" in _one_error_line(refused)


def test_certificate_file_from_the_ssh_config(
    ca_server: tuple[OpenSSHServer, Path, Path], tmp_path: Path
) -> None:
    server, ca, folder = ca_server
    key = _signed_key(ca, folder, server.username, "elsewhere")
    moved = tmp_path / "certs" / "my-cert.pub"
    moved.parent.mkdir()
    Path(f"{key}-cert.pub").rename(moved)
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  IdentityFile {key}\n  CertificateFile {moved}\n")
    result = _fetch(server, tmp_path, SSH_CONFIG_FILE=str(config))
    assert result.returncode == 0, result.stderr


def test_agent_is_tried_after_a_key_file_the_server_refuses(
    server: OpenSSHServer, encrypted_key: Path, agent: Agent, tmp_path: Path
) -> None:
    unauthorized = tmp_path / "id_other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(unauthorized)], check=True
    )
    agent.add(encrypted_key, PASSPHRASE)
    result = _fetch(
        server, tmp_path, SSH_KEY_FILE=str(unauthorized), SSH_AUTH_SOCK=str(agent.socket)
    )
    assert result.returncode == 0, result.stderr
    # Without the agent the same key file is refused: the agent's key did it.
    refused = _fetch(server, tmp_path, SSH_KEY_FILE=str(unauthorized))
    assert refused.returncode == 3, refused.stderr


def test_unusable_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "id_plain"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    bogus = tmp_path / "bogus-cert.pub"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"CertificateFile {bogus}: not a usable certificate"):
        load_client_keys([key], None, [bogus])
    assert len(load_client_keys([key], None, [tmp_path / "missing-cert.pub"]).keypairs) == 1
