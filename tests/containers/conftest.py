"""Fixtures for the container tests: podman's Docker API, a copy of the repo, compose.

No Docker engine runs here: ``containers/setup.sh`` installs Debian's podman and
starts its Docker-compatible API service; the ``docker`` CLI, Debian's
``docker-compose`` (v1) and the Compose v2 plugin (``docker compose``) talk to
it through ``DOCKER_HOST``. The tests run on a copy of the repository (what git
would commit, plus ``.env`` copied from ``.env.example``), never on the real
tree, and only when ``DATAFERRY_CONTAINER_TESTS=1`` (``make test-containers``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "containers" / "setup.sh"
SOCKET = os.environ.get("DATAFERRY_PODMAN_SOCK", "/run/dataferry-podman.sock")
PROJECT = "dataferryct"
DEV_IMAGE = "dataferry-dev"
PROD_IMAGE = "dataferry:prod"
ENABLE_VAR = "DATAFERRY_CONTAINER_TESTS"

# Image sizes collected by the tests, printed in pytest's summary.
IMAGE_SIZES: dict[str, int] = {}


def skip_reason() -> str | None:
    if os.environ.get(ENABLE_VAR) != "1":
        return f"container tests run with `make test-containers` ({ENABLE_VAR}=1)"
    if os.geteuid() != 0:
        return (
            "needs root: apt-get, debootstrap and podman's rootful API service "
            "(run `sudo make test-containers`)"
        )
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "podman is not installed and this is no Debian system to install it on"
    return None


@dataclass
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n"
            f"{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"
        )


@dataclass
class Docker:
    """Runs docker / docker-compose commands against podman, in the repo copy."""

    project_dir: Path
    env: dict[str, str]
    v1: list[str] = field(default_factory=lambda: ["docker-compose"])
    v2: list[str] = field(default_factory=lambda: ["docker", "compose"])

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
        cwd: Path | None = None,
    ) -> Result:
        proc = subprocess.run(
            list(args),
            cwd=cwd or self.project_dir,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )
        result = Result(list(args), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"command failed\n{result.describe()}")
        return result

    def compose(
        self, *args: str, spelling: str = "v1", check: bool = True, timeout: float = 600
    ) -> Result:
        base = self.v1 if spelling == "v1" else self.v2
        return self.run([*base, *args], check=check, timeout=timeout)

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> Result:
        return self.run(["docker", *args], check=check, timeout=timeout)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=120)
        self.compose(
            "-f",
            "docker-compose.prod.yaml",
            "down",
            "--volumes",
            "--remove-orphans",
            check=False,
            timeout=120,
        )

    def image_size(self, image: str) -> int:
        out = self.docker("image", "inspect", "--format", "{{.Size}}", image).stdout
        return int(out.strip())


@pytest.fixture(scope="session", autouse=True)
def _gate() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


#: Planted in the copied project folder; test_images_carry_no_secrets_or_dot_files
#: checks that neither image holds any of them.
PLANTED_SECRETS = (
    "keys/id_ed25519",
    "id_rsa",
    "prod.env",
    "src/credentials.env",
    "src/dataferry/server.pem",
)


def _copy_repo(dest: Path) -> None:
    """What git would commit (tracked + untracked, not ignored), without .env or data."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file() or name == ".env" or name.startswith("data/"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """Runs containers/setup.sh (idempotent) and returns the environment for docker commands."""
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"containers/setup.sh failed:\n{proc.stdout}\n{proc.stderr}")
    env = dict(os.environ)
    env.update(
        {
            "DOCKER_HOST": f"unix://{SOCKET}",
            "COMPOSE_PROJECT_NAME": PROJECT,
            # Plain, parseable output from compose v2.
            "COMPOSE_ANSI": "never",
            "COMPOSE_PROGRESS": "plain",
            "COMPOSE_STATUS_STDOUT": "1",
            "DOCKER_CLI_HINTS": "false",
        }
    )
    env.pop("DOCKER_CONTEXT", None)
    return env


@pytest.fixture(scope="session")
def project_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dataferry-containers-") as tmp:
        root = Path(tmp) / "dataferry"
        root.mkdir()
        _copy_repo(root)
        # The README's first step for a new user (another file can stand in for
        # .env.example: DATAFERRY_CONTAINERS_DOTENV=PATH).
        dotenv = os.environ.get("DATAFERRY_CONTAINERS_DOTENV") or root / ".env.example"
        shutil.copy(dotenv, root / ".env")
        # What users leave lying in a project folder: never part of an image.
        for planted in PLANTED_SECRETS:
            (root / planted).parent.mkdir(parents=True, exist_ok=True)
            (root / planted).write_text("secret\n", encoding="utf-8")
        yield root


@pytest.fixture(scope="session")
def planted_secrets() -> tuple[str, ...]:
    return PLANTED_SECRETS


@pytest.fixture(scope="session")
def docker(docker_env: dict[str, str], project_dir: Path) -> Iterator[Docker]:
    d = Docker(project_dir, docker_env)
    d.down()
    try:
        yield d
    finally:
        d.docker("rm", "--force", "metrics-probe", check=False, timeout=60)
        d.down()
        # Superseded builds and the prod build stage; the tagged images stay cached.
        d.docker("image", "prune", "--force", check=False, timeout=120)


@pytest.fixture(scope="session", autouse=True)
def _healthcheck_pump(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run podman's healthchecks: it schedules them with systemd timers, and there is no systemd.

    Docker runs healthchecks itself; podman without systemd never does, so the
    tasks' ``depends_on: condition: service_healthy`` would wait forever. This
    thread does what the timers would: ``podman healthcheck run`` every second.
    """
    if skip_reason() or Path("/run/systemd/system").is_dir():
        yield
        return
    stop = threading.Event()

    def pump() -> None:
        while not stop.wait(1.0):
            try:
                ids = subprocess.run(
                    ["podman", "ps", "-q", "--filter", "health=starting"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                ).stdout.split()
                for cid in ids:
                    subprocess.run(
                        ["podman", "healthcheck", "run", cid], capture_output=True, timeout=20
                    )
            except (OSError, subprocess.SubprocessError):
                continue

    thread = threading.Thread(target=pump, name="healthcheck-pump", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def dev_image(docker: Docker) -> str:
    """`docker-compose build`, the seed's first command."""
    docker.compose("build")
    IMAGE_SIZES["python:3.11.8-slim (the stand-in base)"] = docker.image_size(
        "docker.io/library/python:3.11.8-slim"
    )
    IMAGE_SIZES[f"{DEV_IMAGE} (Dockerfile)"] = docker.image_size(DEV_IMAGE)
    return DEV_IMAGE


@pytest.fixture(scope="session")
def prod_image(docker: Docker) -> str:
    docker.docker("build", "-f", "Dockerfile.prod", "-t", PROD_IMAGE, ".")
    IMAGE_SIZES[f"{PROD_IMAGE} (Dockerfile.prod)"] = docker.image_size(PROD_IMAGE)
    return PROD_IMAGE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not IMAGE_SIZES:
        return
    terminalreporter.section("image sizes (podman, uncompressed)")
    for name, size in IMAGE_SIZES.items():
        terminalreporter.write_line(f"{name}: {size / 1e6:.0f} MB")
