"""requirements.txt (used by the Dockerfile) must pin what pyproject.toml pins."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_requirements_match_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = sorted(project["dependencies"])
    lines = (REPO / "requirements.txt").read_text().splitlines()
    required = sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    assert required == pinned
    assert all("==" in requirement for requirement in pinned)


def test_env_file_is_ignored_and_example_shipped() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    example = (REPO / ".env.example").read_text()
    for variable in (
        "REMOTE_HOST_ADDRESS",
        "USERNAME",
        "PASSWORD",
        "REMOTE_PORT",
        "SSH_KEY_FILE",
        "SSH_KNOWN_HOSTS",
        "SSH_HOST_KEY_POLICY",
    ):
        assert variable in example
