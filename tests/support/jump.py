"""A target reachable only through a jump host, and an ssh-agent: real OpenSSH throughout.

The network: a fresh network namespace joined to ours by a veth pair with a
private /30 (no default route inside, nothing routed off the machine). In it:

- ``jump``: sshd listening on the namespace's veth address, the only thing
  our namespace can reach;
- ``inner``: a second jump host on the namespace's own 127.0.0.1;
- ``target``: sshd on the namespace's own 127.0.0.1.

Our 127.0.0.1 is not the namespace's, so a byte that reaches ``target`` has
crossed ``jump``. Needs root (``ip netns``); everything is removed on stop.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sshd import SSHD, _keygen, sshd_available


def netns_available() -> str | None:
    """None when a jump network can be built here, else why not."""
    reason = sshd_available()
    if reason:
        return reason
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed (.ci/run installs it)"
    probe = f"dfj-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


@dataclass
class NamespacedSSHD:
    """An sshd inside the namespace, listening on host:port there."""

    name: str
    host: str
    port: int
    host_public_key: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Per-connection children live in the same session: gone with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class JumpNetwork:
    namespace: str
    outer_address: str  # our end of the veth pair
    jump: NamespacedSSHD
    inner: NamespacedSSHD
    target: NamespacedSSHD
    client_key: Path
    username: str
    workdir: Path
    servers: list[NamespacedSSHD] = field(default_factory=list)

    def known_hosts(self, path: Path, *, skip: tuple[str, ...] = ()) -> Path:
        """A known_hosts file trusting every server except those named in skip."""
        lines = [
            server.known_hosts_line()
            for server in (self.jump, self.inner, self.target)
            if server.name not in skip
        ]
        path.write_text("\n".join(lines) + "\n")
        return path


def _start_sshd(
    namespace: str, workdir: Path, name: str, host: str, port: int, authorized: Path
) -> NamespacedSSHD:
    folder = workdir / name
    folder.mkdir(parents=True)
    host_key = folder / "ssh_host_ed25519_key"
    public = _keygen(host_key)
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host}:{port}",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                "MaxStartups 100:30:200",
            ]
        )
        + "\n"
    )
    log = open(folder / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
    # `ip netns exec` execs sshd itself: the process (and its session) is sshd's.
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, SSHD, "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    server = NamespacedSSHD(name, host, port, " ".join(public.split()[:2]), process, folder)
    deadline = time.monotonic() + 10
    probe = f"exec 3<>/dev/tcp/{host}/{port}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd {name} exited: {(folder / 'sshd.log').read_text()[-2000:]}")
        ready = subprocess.run(
            ["ip", "netns", "exec", namespace, "bash", "-c", probe], capture_output=True
        )
        if ready.returncode == 0:
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"sshd {name} did not listen within 10 s")


@contextlib.contextmanager
def jump_network(workdir: Path) -> Iterator[JumpNetwork]:
    """The namespace, its veth link and three sshds; all removed on exit."""
    tag = secrets.token_hex(3)
    namespace, outer, inner_link = f"dfj-{tag}", f"dfj{tag}a", f"dfj{tag}b"
    subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
    servers: list[NamespacedSSHD] = []
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner_link)
        _ip("link", "set", inner_link, "netns", namespace)
        # A random private /30: parallel runs on one machine do not collide.
        block = secrets.randbelow(64) * 4
        second = 200 + secrets.randbelow(50)
        outer_address = f"10.{second}.{secrets.randbelow(256)}.{block + 1}"
        inside_address = outer_address.rsplit(".", 1)[0] + f".{block + 2}"
        _ip("addr", "add", f"{outer_address}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("addr", "add", f"{inside_address}/30", "dev", inner_link, namespace=namespace)
        _ip("link", "set", inner_link, "up", namespace=namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        client_key = workdir / "client_ed25519"
        authorized = workdir / "authorized_keys"
        authorized.write_text(_keygen(client_key) + "\n")
        ports = iter(secrets.SystemRandom().sample(range(20000, 30000), 3))
        for name, host in (
            ("jump", inside_address),
            ("inner", "127.0.0.1"),
            ("target", "127.0.0.1"),
        ):
            servers.append(_start_sshd(namespace, workdir, name, host, next(ports), authorized))
        yield JumpNetwork(
            namespace=namespace,
            outer_address=outer_address,
            jump=servers[0],
            inner=servers[1],
            target=servers[2],
            client_key=client_key,
            username=pwd.getpwuid(os.geteuid()).pw_name,
            workdir=workdir,
            servers=servers,
        )
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        # The veth pair goes with the namespace; this covers a half-built one.
        subprocess.run(["ip", "link", "del", outer], capture_output=True)


@dataclass
class Agent:
    """A running ssh-agent; SSH_AUTH_SOCK for clients is ``socket``."""

    socket: Path
    process: subprocess.Popen[bytes]

    def add(self, key: Path, passphrase: str | None = None) -> None:
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}
        if passphrase is None:
            subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
            return
        # ssh-add reads the passphrase through SSH_ASKPASS when it has no terminal.
        askpass = self.socket.parent / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        subprocess.run(
            ["ssh-add", "-q", str(key)],
            env=env,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def ssh_agent(workdir: Path) -> Iterator[Agent]:
    """ssh-agent in the foreground (-D) on a socket in workdir; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.02)
        yield Agent(sock, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
