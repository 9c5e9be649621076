"""Packaging: requirements.txt pins what pyproject.toml pins; what loads at start-up."""

from __future__ import annotations

import subprocess
import sys
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


def _fresh_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_command_line_loads_no_ssh_or_validation_library_up_front() -> None:
    """The TCP connection opens while asyncssh loads, and the login starts
    while pydantic loads: neither may come with the command line itself."""
    for module in ("dataferry.cli", "dataferry.cli.commands.run", "dataferry.sources.ssh.tcp"):
        loaded = _fresh_python(
            f"import sys, {module}; "
            "print(sorted(m for m in ('asyncssh', 'pydantic', 'isal') if m in sys.modules))"
        )
        assert loaded == "[]", module
