"""Connection settings from the environment and .env: defaults, precedence, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dataferry import ConfigError, ConnectionSettings, HostKeyPolicy, resolve_connection
from dataferry._connection import Secret

ENV = {"REMOTE_HOST_ADDRESS": "example.org", "USERNAME": "me", "PASSWORD": "s3cret-Pa55"}


def test_connection_defaults() -> None:
    settings = resolve_connection(ENV)
    assert (settings.host, settings.port, settings.username) == ("example.org", 22, "me")
    assert settings.host_key_policy is HostKeyPolicy.STRICT
    assert settings.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"REMOTE_PORT": "http"},
            'REMOTE_PORT: expected a port number from 1 to 65535, got "http"',
        ),
        ({"REMOTE_PORT": "70000"}, "REMOTE_PORT: expected a port number"),
        ({"SSH_HOST_KEY_POLICY": "yolo"}, "SSH_HOST_KEY_POLICY: expected strict or accept-new"),
        ({"SSH_KEY_FILE": "/no/such/key"}, "SSH_KEY_FILE: no such file: /no/such/key"),
        ({"REMOTE_HOST_ADDRESS": ""}, "REMOTE_HOST_ADDRESS is not set"),
    ],
)
def test_connection_errors_never_show_the_password(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_connection({**ENV, **extra})
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_dotenv_file_and_environment_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "REMOTE_HOST_ADDRESS=from-file\nUSERNAME=file-user\nPASSWORD=pw\nREMOTE_PORT=2222\n"
    )
    monkeypatch.chdir(tmp_path)
    for key in ("REMOTE_HOST_ADDRESS", "USERNAME", "PASSWORD", "REMOTE_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("USERNAME", "env-user")
    settings = resolve_connection()
    assert (settings.host, settings.username, settings.port) == ("from-file", "env-user", 2222)


def test_port_and_policy_are_checked_in_code_too() -> None:
    settings = resolve_connection(ENV)
    with pytest.raises(ValueError, match="port 0"):
        dataclasses.replace(settings, port=0)
    with pytest.raises(ValueError):
        ConnectionSettings(host="h", username="u", host_key_policy="yolo")  # type: ignore[arg-type]
    plain = ConnectionSettings(host="h", username="u", host_key_policy="accept-new")  # type: ignore[arg-type]
    assert plain.host_key_policy is HostKeyPolicy.ACCEPT_NEW


def test_secret_is_never_shown() -> None:
    secret = Secret("s3cret-Pa55")
    settings = dataclasses.replace(resolve_connection(ENV), password=secret)
    for shown in (repr(secret), str(secret), repr(settings), str(settings), f"{settings}"):
        assert "s3cret" not in shown
    assert secret.get_secret_value() == "s3cret-Pa55"


def test_password_keeps_its_spaces() -> None:
    settings = resolve_connection({**ENV, "PASSWORD": " two words "})
    assert settings.password is not None
    assert settings.password.get_secret_value() == " two words "
    assert resolve_connection({**ENV, "PASSWORD": "   "}).password is None
