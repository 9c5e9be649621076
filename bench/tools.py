"""Find the external programs the peers need; install the missing ones when root."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# Debian packages that provide each executable.
PACKAGES = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "sftp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rclone": "rclone",
    "unzip": "unzip",
    "tar": "tar",
    "bash": "bash",
    "/usr/bin/time": "time",
}


def _present(tool: str) -> bool:
    if os.path.isabs(tool):
        return os.access(tool, os.X_OK)
    if tool == "sshd":
        return shutil.which("sshd") is not None or os.path.exists("/usr/sbin/sshd")
    return shutil.which(tool) is not None


def missing(tools: Iterable[str]) -> list[str]:
    return sorted({t for t in tools if not _present(t)})


def ensure(tools: Iterable[str]) -> list[str]:
    """Install what is missing with apt-get when root; return what is still missing."""
    absent = missing(tools)
    packages = sorted({PACKAGES[t] for t in absent if t in PACKAGES})
    if packages and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(packages)} ...", flush=True)
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=False,
            env=env,
        )
    return missing(tools)


def dataferry_works(executable: str) -> str | None:
    """None when ``dataferry --help`` runs, else why not.

    Byte-compiles the package first, as installing a wheel does: an editable
    install under PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every
    edited module on every timed run (~10 ms for the extraction code alone).
    """
    if not _present(executable):
        return f"{executable} not found (install the package: pip install -e .)"
    subprocess.run(
        [
            str(Path(executable).parent / "python"),
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            *_package_dirs(executable),
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    done = subprocess.run(
        [executable, "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        return f"`{executable} --help` exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return None


def _package_dirs(executable: str) -> list[str]:
    """Where the dataferry package that ``executable`` runs lives."""
    done = subprocess.run(
        [
            str(Path(executable).parent / "python"),
            "-c",
            "import importlib.util as u; "
            "print(*u.find_spec('dataferry').submodule_search_locations)",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.stdout.split() if done.returncode == 0 else []
