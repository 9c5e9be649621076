"""Every contender as the command line a user would type.

A peer turns a :class:`Job` (workload, how to reach the server, an empty
destination folder) into an :class:`Invocation`; the runner times it as a
subprocess. Archive peers include extraction in their command, as a user
fetching a dataset would.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.workloads import Workload

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoint:
    """How to reach the sshd: directly or through the delay proxy."""

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    jump: str | None = None  # "user@host:port" of a jump host (ssh -J), or None

    def dataferry_env(self) -> dict[str, str]:
        """dataferry's connection variables for this endpoint (no ssh_config)."""
        env = {
            "REMOTE_HOST_ADDRESS": self.host,
            "REMOTE_PORT": str(self.port),
            "USERNAME": self.user,
            "SSH_KEY_FILE": str(self.key),
            "SSH_KNOWN_HOSTS": str(self.known_hosts),
            "SSH_HOST_KEY_POLICY": "strict",
            "SSH_CONFIG_FILE": "none",
        }
        if self.jump is not None:
            env["SSH_PROXY_JUMP"] = self.jump
        return env

    def ssh_options(self) -> list[str]:
        """Options shared by ssh, scp and sftp (the test fixtures' choice)."""
        return [
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.key),
        ]

    def rclone_remote(self, path: Path) -> str:
        """An on-the-fly rclone sftp remote: no config file needed."""
        return (
            f":sftp,host={self.host},port={self.port},user={self.user},"
            f"key_file={self.key},known_hosts_file={self.known_hosts}:{path}"
        )


@dataclass(frozen=True)
class Job:
    workload: Workload
    endpoint: Endpoint
    dest: Path  # empty folder; the peer downloads into it
    scratch: Path  # for batch/config files, outside dest

    @property
    def target(self) -> Path:
        """Where the file, folder or archive lands (archives extract next to it)."""
        return self.dest / self.workload.remote.name

    @property
    def remote(self) -> Path:
        return self.workload.remote


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment

    def shell(self) -> str:
        """As one would paste it into a shell (for logs and docs)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{prefix} {shlex.join(self.argv)}".strip()


@dataclass(frozen=True)
class Peer:
    name: str  # key in results
    label: str  # column in the table
    build: Callable[[Job], Invocation]
    tools: tuple[str, ...] = ()  # executables it needs


def _is_folder(job: Job) -> bool:
    return job.workload.spec.kind == "folder"


def _bash(script: str) -> Invocation:
    return Invocation(["bash", "-o", "errexit", "-o", "pipefail", "-c", script])


def _scp_argv(job: Job, dest: Path) -> list[str]:
    ep = job.endpoint
    recursive = ["-r"] if _is_folder(job) else []
    return [
        "scp",
        "-q",
        *recursive,
        *_jump_options(job),
        *ep.ssh_options(),
        "-P",
        str(ep.port),
        f"{ep.user}@{ep.host}:{job.remote}",
        str(dest),
    ]


def _jump_options(job: Job) -> list[str]:
    """-J, with the options in a config file (-F): ssh passes -F, not -o, to the jump's ssh."""
    ep = job.endpoint
    if ep.jump is None:
        return []
    config = job.scratch / "ssh_config"
    config.write_text(
        f"Host *\n  UserKnownHostsFile {ep.known_hosts}\n  StrictHostKeyChecking yes\n"
        f"  BatchMode yes\n  IdentitiesOnly yes\n  IdentityFile {ep.key}\n"
    )
    return ["-F", str(config), "-J", ep.jump]


def scp(job: Job) -> Invocation:
    return Invocation(_scp_argv(job, job.target))


def sftp(job: Job) -> Invocation:
    ep = job.endpoint
    batch = job.scratch / "sftp.batch"
    recursive = "-r " if _is_folder(job) else ""
    batch.write_text(f'get {recursive}"{job.remote}" "{job.target}"\n')
    return Invocation(
        [
            "sftp",
            "-q",
            "-b",
            str(batch),
            *ep.ssh_options(),
            "-P",
            str(ep.port),
            f"{ep.user}@{ep.host}",
        ]
    )


def _rclone(job: Job, extra: list[str]) -> Invocation:
    verb = "copy" if _is_folder(job) else "copyto"
    remote = job.endpoint.rclone_remote(job.remote)
    return Invocation(["rclone", "--config", "", verb, *extra, remote, str(job.target)])


def rclone(job: Job) -> Invocation:
    return _rclone(job, [])


def rclone32(job: Job) -> Invocation:
    return _rclone(job, ["--transfers", "32"])


def seed(job: Job) -> Invocation:
    """paramiko ``SFTPClient.get`` per file, one after another, then extract."""
    ep = job.endpoint
    extract = ["--extract"] if job.workload.spec.kind in ("zip", "tar.gz") else []
    return Invocation(
        [
            sys.executable,
            "-m",
            "bench.seed_peer",
            "--host",
            ep.host,
            "--port",
            str(ep.port),
            "--user",
            ep.user,
            "--key",
            str(ep.key),
            "--known-hosts",
            str(ep.known_hosts),
            *extract,
            str(job.remote),
            str(job.target),
        ],
        {"PYTHONPATH": str(REPO)},  # runs from the scratch folder, like every peer
    )


def scp_unzip(job: Job) -> Invocation:
    archive = job.target
    return _bash(
        f"{shlex.join(_scp_argv(job, archive))}\n"
        f"unzip -q {shlex.quote(str(archive))} -d {shlex.quote(str(job.dest))}\n"
        f"rm {shlex.quote(str(archive))}"
    )


def scp_tar(job: Job) -> Invocation:
    archive = job.target
    return _bash(
        f"{shlex.join(_scp_argv(job, archive))}\n"
        f"tar -xzf {shlex.quote(str(archive))} -C {shlex.quote(str(job.dest))}\n"
        f"rm {shlex.quote(str(archive))}"
    )


def ssh_cat_tar(job: Job) -> Invocation:
    """The streaming peer: extraction runs while the archive arrives."""
    ep = job.endpoint
    ssh = [
        "ssh",
        *ep.ssh_options(),
        "-p",
        str(ep.port),
        f"{ep.user}@{ep.host}",
        f"cat {shlex.quote(str(job.remote))}",
    ]
    return _bash(f"{shlex.join(ssh)} | tar -xzf - -C {shlex.quote(str(job.dest))}")


def dataferry(job: Job) -> Invocation:
    """``dataferry run bench --config config.json`` with connection settings in env vars."""
    task: dict[str, object] = {
        "file_save_path": str(job.target),
        "remote_file_path": str(job.remote),
    }
    if _is_folder(job):
        task["include"] = ["*"]
    config = {
        "common": {
            "overwrite": True,
            "keep_zip_tar_file": False,
            "max_tries": 1,
            "log-level": "WARNING",
        },
        "bench": task,
    }
    path = job.scratch / "config.json"
    path.write_text(json.dumps(config, indent=2))
    env = job.endpoint.dataferry_env()
    return Invocation([str(DATAFERRY), "run", "bench", "--config", str(path)], env)


def dataferry_on_terminal(job: Job) -> Invocation:
    """The same run with stderr on a pseudo-terminal: the live display's cost."""
    plain = dataferry(job)
    return Invocation(
        [sys.executable, "-m", "bench.on_terminal", *plain.argv],
        {**plain.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), _pythonpath()]))},
    )


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


DATAFERRY = VENV_BIN / "dataferry"

PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("dataferry", "dataferry", dataferry, (str(DATAFERRY),)),
        Peer("dataferry-tty", "dataferry on a terminal", dataferry_on_terminal, (str(DATAFERRY),)),
        Peer("scp", "scp", scp, ("scp",)),
        Peer("sftp", "sftp", sftp, ("sftp",)),
        Peer("rclone", "rclone", rclone, ("rclone",)),
        Peer("rclone-32", "rclone --transfers 32", rclone32, ("rclone",)),
        Peer("seed", "seed (paramiko)", seed),
        Peer("scp+unzip", "scp + unzip", scp_unzip, ("scp", "unzip", "bash")),
        Peer("scp+tar", "scp + tar -xzf", scp_tar, ("scp", "tar", "bash")),
        Peer("ssh-cat-tar", "ssh cat | tar -xz", ssh_cat_tar, ("ssh", "tar", "bash")),
    )
}
