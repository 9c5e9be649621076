"""Start a real OpenSSH ``sshd`` on a free loopback port, for tests and the benchmark.

Nothing here is mocked: the server is Debian's ``openssh-server`` with a host
key made for the run. Key authentication works as the current user; when we
run as root, a throwaway user with a password is created for password tests.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PASSWORD_USER = "dataferry-test"


def sshd_available() -> str | None:
    """None when sshd can run here, else the reason it cannot."""
    if not os.path.exists(SSHD):
        return "OpenSSH sshd not installed (`make test` installs openssh-server as root)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen not installed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "dataferry-test", "-f", str(path)],
        check=True,
    )
    return Path(f"{path}.pub").read_text().strip()


PASSWORD_FILE = Path("/var/lib/dataferry-test/password")


def shared_password() -> str:
    """The throwaway user's password: made once per machine (root-only file), so
    test runs and benchmarks running at the same time agree on it."""
    if not PASSWORD_FILE.exists():
        PASSWORD_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(12))
    return PASSWORD_FILE.read_text().strip()


def ensure_password_user(password: str) -> str | None:
    """Create (or reset) the throwaway password user; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PASSWORD_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", PASSWORD_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{PASSWORD_USER}:{password}\n", text=True, check=True)
    return PASSWORD_USER


@dataclass
class OpenSSHServer:
    """A running sshd. Use :func:`start_sshd` to make one."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes]
    host_public_key: str
    client_key: Path
    username: str
    password_user: str | None
    password: str
    extra_config: list[str] = field(default_factory=list)

    host = "127.0.0.1"

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def write_known_hosts(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.known_hosts_line() + "\n")
        return path

    def ssh_options(self, known_hosts: Path) -> list[str]:
        """Options for OpenSSH's own clients (scp, sftp, ssh) to reach this server."""
        return [
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.client_key),
        ]

    def stop(self) -> None:
        """Stop sshd and every connection it serves, as a server restart would."""
        children = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port with the same keys."""
        self.stop()
        self.process = _launch(self.workdir, self.port)


def _descendants(root: int) -> list[int]:
    """Every process below root (sshd's per-connection children start their own sessions)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name may hold spaces; the fields after its ")" are fixed.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _launch(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(workdir / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(workdir / "sshd_config")],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (workdir / "sshd.log").read_text()[-2000:]
            raise RuntimeError(f"sshd exited with {process.returncode}: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("sshd did not start listening within 10 s")


def start_sshd(workdir: Path, extra_config: list[str] | None = None) -> OpenSSHServer:
    """Start sshd with config, keys and logs in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "client_ed25519"
    host_public = _keygen(host_key)
    client_public = _keygen(client_key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_public + "\n")
    authorized.chmod(0o644)
    password = shared_password() if os.geteuid() == 0 else secrets.token_urlsafe(12)
    password_user = ensure_password_user(password)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    lines = [
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes",
        f"PasswordAuthentication {'yes' if password_user else 'no'}",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        *(
            []
            if any(line.startswith("Subsystem sftp") for line in extra_config or [])
            else ["Subsystem sftp internal-sftp"]
        ),
        "LogLevel ERROR",
        # Many parallel test connections must not be throttled.
        "MaxStartups 100:30:200",
        "MaxSessions 64",
        *(extra_config or []),
    ]
    for attempt in range(5):
        port = free_port()
        (workdir / "sshd_config").write_text(
            "\n".join([f"ListenAddress 127.0.0.1:{port}", *lines]) + "\n"
        )
        try:
            process = _launch(workdir, port)
        except RuntimeError:
            if attempt == 4:
                raise
            continue
        return OpenSSHServer(
            workdir=workdir,
            port=port,
            process=process,
            host_public_key=" ".join(host_public.split()[:2]),
            client_key=client_key,
            username=pwd.getpwuid(os.geteuid()).pw_name,
            password_user=password_user,
            password=password,
            extra_config=list(extra_config or []),
        )
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_sshd(workdir: Path, extra_config: list[str] | None = None) -> Iterator[OpenSSHServer]:
    server = start_sshd(workdir, extra_config)
    try:
        yield server
    finally:
        server.stop()
