"""The shipped config.json, compose files, Dockerfiles and .env.example agree (no containers).

The seed's warning: config.json's save path must match the container side of
the task's volume, or the data is written inside the container and lost. The
tasks refuse such a path at run time (DATAFERRY_DATA_DIR); these tests keep the
shipped files from disagreeing in the first place. tests/containers builds and
runs them for real (``make test-containers``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from dataferry._settings import DATA_DIR_ENV, MANIFEST_ENV, ConfigFile, resolve_task

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: it belongs in the [test] extra")

REPO = Path(__file__).resolve().parents[1]
APP = PurePosixPath("/app")  # the project root inside the images
DATA_DIR = APP / "data"
TASKS = (1, 2, 3)


def load_yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def dev() -> dict[str, Any]:
    return load_yaml("docker-compose.yaml")


@pytest.fixture(scope="module")
def prod() -> dict[str, Any]:
    return load_yaml("docker-compose.prod.yaml")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data = json.loads((REPO / "config.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """host path -> container path, for the short-syntax bind mounts of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def dockerfile_env(name: str) -> dict[str, str]:
    """ENV values of the last stage of a Dockerfile (continuation lines joined)."""
    text = (REPO / name).read_text(encoding="utf-8").replace("\\\n", " ")
    last_stage = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------ save paths vs volumes


@pytest.mark.parametrize("n", TASKS)
def test_config_save_path_lies_in_the_task_volume(
    n: int, config: dict[str, Any], dev: dict[str, Any]
) -> None:
    save_path = config[f"task_{n}"]["file_save_path"]
    # Relative paths are taken from the project root, /app in the image
    # (pathlib drops the "." parts).
    in_container = PurePosixPath(APP, save_path)
    data_mounts = {
        host: target
        for host, target in bind_mounts(dev["services"][f"task{n}"]).items()
        if target.startswith(str(DATA_DIR))
    }
    assert data_mounts == {f"./data/task{n}": f"/app/data/task{n}"}, data_mounts
    ((host, target),) = data_mounts.items()
    assert in_container.is_relative_to(target), (
        f"config.json task_{n}.file_save_path {save_path} resolves to {in_container} in the "
        f"container, outside the volume {host}:{target}: the data would be lost"
    )
    # ...and on the host it lands where the same relative path points.
    on_host = PurePosixPath(host, in_container.relative_to(target))
    assert on_host == PurePosixPath(save_path)


def test_shipped_config_passes_the_container_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DATAFERRY_DATA_DIR set as the images set it, every shipped task is accepted."""
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    monkeypatch.chdir(app)
    monkeypatch.setenv(DATA_DIR_ENV, str(app / "data"))
    shipped = ConfigFile.load(REPO / "config.json")
    for n in TASKS:
        resolve_task(f"task_{n}", shipped)


def compose_default(value: str) -> str:
    """The default in "${VAR:-default}": what Compose substitutes when VAR is unset."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.prod"])
def test_images_declare_the_data_folder(
    dockerfile: str, dev: dict[str, Any], prod: dict[str, Any]
) -> None:
    assert dockerfile_env(dockerfile).get(DATA_DIR_ENV) == str(DATA_DIR)
    for n in TASKS:
        for target in bind_mounts(dev["services"][f"task{n}"]).values():
            if target.startswith("/app/data"):
                assert PurePosixPath(target).is_relative_to(DATA_DIR)
    assert named_volumes(prod["services"]["production-code"]) == {"data": str(DATA_DIR)}


# ------------------------------------------------------------ the manifest

# config.json is mounted read-only (dev) or not writable by the image's user
# (prod), so the default manifest beside it would fail every run (exit 7): each
# image and task service names a writable place that outlives the container.


def service_environment(service: dict[str, Any], dockerfile: str) -> dict[str, str]:
    """What a service's process sees: the image's ENV, then the compose environment."""
    env = dockerfile_env(dockerfile)
    declared = service.get("environment", {})
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) for item in declared)
    env.update({key: str(value) for key, value in declared.items()})
    return env


def task_folder(config: dict[str, Any], n: int) -> PurePosixPath:
    """The container folder task n may write into: its data volume (/app/data/taskN),
    which holds config.json's file_save_path (test_config_save_path_lies_in_the_task_volume)."""
    folder = DATA_DIR / f"task{n}"
    assert PurePosixPath(APP, config[f"task_{n}"]["file_save_path"]).is_relative_to(folder)
    return folder


def writable_mount(service: dict[str, Any], path: PurePosixPath) -> tuple[str, str] | None:
    """(source, target) of the read-write mount path lies in, the deepest one."""
    found: tuple[str, str] | None = None
    for volume in service.get("volumes", []):
        source, target, *options = str(volume).split(":")
        if "ro" in options or not path.is_relative_to(target):
            continue
        if found is None or len(target) > len(found[1]):
            found = (source, target)
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.prod"])
def test_images_keep_the_manifest_in_the_data_folder(
    dockerfile: str, config: dict[str, Any]
) -> None:
    manifest = PurePosixPath(dockerfile_env(dockerfile)[MANIFEST_ENV])
    assert manifest.is_absolute() and manifest.is_relative_to(DATA_DIR), manifest
    for n in TASKS:
        assert not manifest.is_relative_to(task_folder(config, n)), (n, manifest)


@pytest.mark.parametrize("n", TASKS)
def test_dev_tasks_record_the_manifest_in_a_shared_mount_outside_their_folder(
    n: int, dev: dict[str, Any], config: dict[str, Any]
) -> None:
    service = dev["services"][f"task{n}"]
    manifest = PurePosixPath(service_environment(service, "Dockerfile")[MANIFEST_ENV])
    assert manifest.is_absolute(), manifest
    # Kept on the host (a bind mount of this service, writable) ...
    mount = writable_mount(service, manifest)
    assert mount is not None, f"task{n}: {manifest} is in no writable mount"
    source, target = mount
    assert source.startswith((".", "/")), f"task{n}: {manifest} is not on the host"
    # ... but neither in this task's folder nor in any other's.
    for other in TASKS:
        folder = task_folder(config, other)
        assert not manifest.is_relative_to(folder), (n, other, manifest)
        assert not PurePosixPath(target).is_relative_to(folder), (n, other, target)
    # One manifest for the three tasks: the same file, through the same host folder.
    first = dev["services"]["task1"]
    assert service_environment(first, "Dockerfile")[MANIFEST_ENV] == str(manifest)
    assert writable_mount(first, manifest) == mount


def test_prod_service_records_the_manifest_in_the_data_volume(
    prod: dict[str, Any], config: dict[str, Any]
) -> None:
    service = prod["services"]["production-code"]
    manifest = PurePosixPath(service_environment(service, "Dockerfile.prod")[MANIFEST_ENV])
    assert writable_mount(service, manifest) == ("data", str(DATA_DIR)), manifest
    for n in TASKS:
        assert not manifest.is_relative_to(task_folder(config, n)), (n, manifest)


# ------------------------------------------------------------ development compose file


@pytest.mark.parametrize("n", TASKS)
def test_dev_task_services_follow_the_seed(n: int, dev: dict[str, Any]) -> None:
    service = dev["services"][f"task{n}"]
    assert service["build"] == "."
    assert as_list(service["env_file"]) == [".env"]
    assert service["container_name"] == f"task{n}-dev"
    assert service["ports"] == [f"127.0.0.1:{7999 + n}:8000"]
    command = service["command"]
    assert command.startswith(f"task_{n}.py --task task_{n} --config_file config.json")
    assert "--metrics_port 8000" in command and "--log-level DEBUG" in command
    # The source is mounted: edit on the host, rerun without rebuilding.
    assert bind_mounts(service)["./src"] == "/app/src"
    assert service["depends_on"] == {"sftp": {"condition": "service_healthy"}}


@pytest.mark.parametrize("n", TASKS)
def test_dev_tasks_trust_the_sftp_service_by_its_known_hosts(n: int, dev: dict[str, Any]) -> None:
    service = dev["services"][f"task{n}"]
    # Defaults: .env's values win (test_env_values_reach_the_task_services).
    env = {key: compose_default(str(value)) for key, value in service["environment"].items()}
    assert env["REMOTE_HOST_ADDRESS"] == "sftp"
    assert str(env["REMOTE_PORT"]) == "2222"
    assert env["SSH_KNOWN_HOSTS"] == "/known_hosts/known_hosts"
    assert env["SSH_HOST_KEY_POLICY"] == "strict"
    assert "known_hosts:/known_hosts:ro" in service["volumes"]


def test_sftp_service_serves_the_sample_and_writes_known_hosts(dev: dict[str, Any]) -> None:
    sftp = dev["services"]["sftp"]
    command = " ".join(as_list(sftp["command"]))
    for part in (
        "dataferry serve",
        "--sample",
        "--host sftp",
        "--port 2222",
        "--known-hosts-out /known_hosts/known_hosts",
    ):
        assert part in command, part
    assert named_volumes(sftp) == {"known_hosts": "/known_hosts"}
    assert "ports" not in sftp, "the dev SFTP server stays on the compose network"
    assert "healthcheck" in sftp
    assert "known_hosts" in dev["volumes"]


@pytest.mark.parametrize("name", ["docker-compose.yaml", "docker-compose.prod.yaml"])
def test_published_ports_are_loopback_only(name: str) -> None:
    for service_name, service in load_yaml(name)["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (service_name, port)


# ------------------------------------------------------------ production compose file


def test_prod_compose_file(prod: dict[str, Any]) -> None:
    assert set(prod["services"]) == {"production-code"}
    service = prod["services"]["production-code"]
    assert service["restart"] == "on-failure"
    assert service["build"] == {"context": ".", "dockerfile": "Dockerfile.prod"}
    assert as_list(service["env_file"]) == [".env"]
    assert "ports" not in service
    assert bind_mounts(service) == {}, "no source or host folder mounted in production"
    assert "data" in prod["volumes"]


def test_prod_dockerfile_is_multi_stage_and_unprivileged() -> None:
    text = (REPO / "Dockerfile.prod").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2 and stages[-1] == "python:3.11.8-slim", stages
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "WARNING" in text


def test_dev_dockerfile_follows_the_seed() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11\.8-slim$", text, flags=re.MULTILINE)
    assert "requirements.txt" in text
    assert re.search(r"^ENTRYPOINT \[\"python\"\]$", text, flags=re.MULTILINE)
    workdirs = re.findall(r"^WORKDIR (\S+)", text, flags=re.MULTILINE)
    assert workdirs[-1] == "/app/src"
    assert "chmod +x src/task_*.py" in text


# ------------------------------------------------------------ .env.example and .dockerignore


def read_env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.split(" #")[0].strip().strip("'\"")
    return values


def test_env_example_points_at_the_dev_sftp_service() -> None:
    """`cp .env.example .env && docker-compose up` works as it is."""
    env = read_env_example()
    assert env.get("REMOTE_HOST_ADDRESS") == "sftp"
    assert env.get("REMOTE_PORT") == "2222"
    assert env.get("SSH_KNOWN_HOSTS") == "/known_hosts/known_hosts"
    # The sftp service takes its login from .env, and the tasks log in with it.
    assert env.get("USERNAME"), "USERNAME must be set in .env.example"
    assert env.get("PASSWORD"), "PASSWORD must be set in .env.example"


def test_dockerignore_is_an_allowlist_that_keeps_secrets_out() -> None:
    """Only what the images are built from enters the build context; key-like files
    and *.env files inside src/ are excluded too. (The container tests plant such files
    in the project folder and check that neither image carries them.)"""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"src", "pyproject.toml", "requirements.txt", "config.json"}
    for required in ("**/.*", "**/*.env", "**/*.pem", "**/id_ed25519*", "**/__pycache__"):
        assert required in lines, required


# ------------------------------------------------------------ `docker-compose config`


def compose_config(tmp_path: Path, dotenv: str) -> dict[str, Any]:
    """The dev compose file as Compose resolves it with this .env (no containers run)."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    shutil.copy(REPO / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    (tmp_path / ".env").write_text(dotenv, encoding="utf-8")
    # Nothing from this shell: Compose would prefer it to .env.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    done = subprocess.run(
        [compose, "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert isinstance(data, dict)
    return data


def test_env_example_reaches_the_tasks_as_the_sftp_service(tmp_path: Path) -> None:
    """`cp .env.example .env && docker-compose up` still talks to the dev server."""
    dotenv = (REPO / ".env.example").read_text(encoding="utf-8")
    resolved = compose_config(tmp_path, dotenv)
    for n in TASKS:
        env = resolved["services"][f"task{n}"]["environment"]
        assert env["REMOTE_HOST_ADDRESS"] == "sftp"
        assert str(env["REMOTE_PORT"]) == "2222"
        assert env["SSH_KNOWN_HOSTS"] == "/known_hosts/known_hosts"


def test_env_values_reach_the_task_services(tmp_path: Path) -> None:
    """The seed's way: the real server in .env; the tasks must dial it, not the dev server."""
    dotenv = (
        "REMOTE_HOST_ADDRESS=data.example.org\nREMOTE_PORT=2200\nUSERNAME=me\n"
        "PASSWORD=secret\nSSH_HOST_KEY_POLICY=accept-new\n"
    )
    resolved = compose_config(tmp_path, dotenv)
    for n in TASKS:
        env = resolved["services"][f"task{n}"]["environment"]
        assert env["REMOTE_HOST_ADDRESS"] == "data.example.org"
        assert str(env["REMOTE_PORT"]) == "2200"
        assert env["USERNAME"] == "me"
        assert env["SSH_HOST_KEY_POLICY"] == "accept-new"
        assert env["SSH_KNOWN_HOSTS"] == "/known_hosts/known_hosts"  # the default stays


def test_without_connection_values_the_tasks_use_the_sftp_service(tmp_path: Path) -> None:
    resolved = compose_config(tmp_path, "USERNAME=me\nPASSWORD=secret\n")
    for n in TASKS:
        env = resolved["services"][f"task{n}"]["environment"]
        assert env["REMOTE_HOST_ADDRESS"] == "sftp" and str(env["REMOTE_PORT"]) == "2222"
