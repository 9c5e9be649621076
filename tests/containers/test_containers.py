"""Build and run the images: the seed's development mode, its commands, and production.

Runs against podman's Docker-compatible API (see conftest.py); skipped unless
``make test-containers`` runs it as root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dataferry.devserver.sample import generate_sample_dataset

if TYPE_CHECKING:
    from conftest import Docker

TASKS = ("task1", "task2", "task3")
REMOTE_DIR = "/home/sofascore_academy/l2_dataset"
SHELL_PROBE = "echo inside-$((6*7)); exit\n"


def sample_size(project_dir: Path) -> int:
    """The --sample size the compose file's sftp service generates."""
    text = (project_dir / "docker-compose.yaml").read_text()
    match = re.search(r"--sample\s+(\d+(?:\.\d+)?)([KMG]?)", text)
    assert match, "docker-compose.yaml: the sftp service has no --sample SIZE"
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2)]
    return int(float(match.group(1)) * factor)


@pytest.fixture(scope="module")
def expected_data(project_dir: Path) -> dict[str, dict[str, str]]:
    """sha256 of every file each task should leave, from the same run on the host.

    ``dataferry demo`` serves the same generated sample (same size, same seed)
    and runs the shipped config.json's tasks with the package under test.
    """
    with tempfile.TemporaryDirectory(prefix="dataferry-expected-") as tmp:
        shutil.copy(project_dir / "config.json", Path(tmp) / "config.json")
        env = {k: v for k, v in os.environ.items() if k != "DATAFERRY_DATA_DIR"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dataferry",
                "demo",
                "--config",
                "config.json",
                "--size",
                str(sample_size(project_dir)),
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"dataferry demo failed:\n{proc.stdout}\n{proc.stderr}"
        return {task: tree_digest(Path(tmp) / "data" / task) for task in TASKS}


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256, for the dataset files (dataferry's dot files left out)."""
    digests: dict[str, str] = {}
    if not folder.is_dir():
        return digests
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            digests[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def folder_entries(folder: Path) -> list[str]:
    """Everything in folder, dot files and folders included (relative POSIX paths)."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def manifest_tasks(manifest: Path) -> dict[str, str]:
    """task -> destination, as a manifest records them."""
    document = json.loads(manifest.read_text(encoding="utf-8"))
    return {name: record["destination"] for name, record in document["tasks"].items()}


def _wait_for_tasks(docker: Docker, timeout: float = 300) -> dict[str, int]:
    """Exit code of each task container once all have stopped."""
    names = [f"{task}-dev" for task in TASKS]
    out = docker.docker("wait", *names, timeout=timeout).stdout.split()
    return dict(zip(TASKS, (int(code) for code in out), strict=True))


# Where docker-compose.yaml's tasks keep their shared manifest, on the host.
DEV_MANIFEST = Path("data") / "manifest" / "dataferry.manifest.json"


def _clear_data(project_dir: Path) -> None:
    shutil.rmtree(project_dir / "data", ignore_errors=True)


def _sample_file(tmp_path: Path, project_dir: Path, remote: str) -> Path:
    """The file the sftp service serves at remote, generated here with the same size and seed."""
    dataset = generate_sample_dataset(tmp_path, size_bytes=sample_size(project_dir))
    (found,) = [f for f in dataset.files if f.remote_path == remote]
    return Path(found.local_path)


# ---------------------------------------------------------------- static checks


def test_hadolint_passes_on_both_dockerfiles(docker: Docker) -> None:
    hadolint = shutil.which("hadolint") or "/opt/dataferry-containers/bin/hadolint"
    for dockerfile in ("Dockerfile", "Dockerfile.prod"):
        result = docker.run([hadolint, dockerfile], check=False)
        assert result.returncode == 0, result.describe()


@pytest.mark.parametrize("spelling", ["v1", "v2"])
@pytest.mark.parametrize("compose_file", ["docker-compose.yaml", "docker-compose.prod.yaml"])
def test_compose_files_validate(docker: Docker, spelling: str, compose_file: str) -> None:
    docker.compose("-f", compose_file, "config", "--quiet", spelling=spelling)


# ---------------------------------------------------------------- development mode


@pytest.mark.parametrize("spelling", ["v1", "v2"])
def test_compose_up_fetches_the_three_datasets(
    docker: Docker,
    dev_image: str,
    project_dir: Path,
    expected_data: dict[str, dict[str, str]],
    spelling: str,
    tmp_path: Path,
) -> None:
    """`cp .env.example .env && docker-compose up`: all three datasets, byte for byte."""
    docker.compose("down", "--volumes", "--remove-orphans", check=False)
    _clear_data(project_dir)
    if spelling == "v2":
        docker.compose("build", spelling="v2")
    docker.compose("up", "--detach", spelling=spelling)
    codes = _wait_for_tasks(docker)
    logs = docker.compose("logs", "--no-color", spelling=spelling, check=False).output
    assert codes == dict.fromkeys(TASKS, 0), logs[-8000:]
    for task in TASKS:
        got = tree_digest(project_dir / "data" / task)
        assert got, f"nothing arrived in ./data/{task}\n{logs[-8000:]}"
        assert got == expected_data[task], task
        # Only the results: no manifest, lock, partial or state file.
        assert folder_entries(project_dir / "data" / task) == sorted(expected_data[task]), task
    # The three tasks, run at once, share one manifest outside their folders.
    assert manifest_tasks(project_dir / DEV_MANIFEST) == {
        f"task_{n}": f"/app/data/task{n}" for n in range(1, len(TASKS) + 1)
    }
    # Independently of dataferry's extraction: task1's CSV is the sample zip's member.
    zipped = _sample_file(tmp_path, project_dir, f"{REMOTE_DIR}/january-small.csv.zip")
    with zipfile.ZipFile(zipped) as archive:
        member = archive.read("january-small.csv")
    assert (project_dir / "data" / "task1" / "january-small.csv").read_bytes() == member
    # The dev services log at DEBUG and the host key was verified, not skipped.
    assert " DEBUG " in logs
    assert "host key policy strict" in logs


def test_seed_run_commands_use_the_default_commands(
    docker: Docker,
    dev_image: str,
    project_dir: Path,
    expected_data: dict[str, dict[str, str]],
) -> None:
    """`docker-compose run task1` (and 2, 3): the service's default command, one task each."""
    _clear_data(project_dir)
    for n, task in enumerate(TASKS, start=1):
        result = docker.compose("run", "--rm", task)
        assert f"task_{n}: " in result.stdout, result.describe()
        assert tree_digest(project_dir / "data" / task) == expected_data[task], task


def test_seed_script_then_verify_in_the_container(
    docker: Docker,
    dev_image: str,
    project_dir: Path,
    expected_data: dict[str, dict[str, str]],
) -> None:
    """The seed's `python src/task_1.py --task task_1 --config_file config.json` (from /app),
    then `dataferry verify --all` in the same compose setup: intact (0); a result
    removed on the host: drift (8)."""
    _clear_data(project_dir)
    run = docker.compose(
        "run",
        "--rm",
        "-T",
        "-w",
        "/app",
        "task1",
        "src/task_1.py",
        "--task",
        "task_1",
        "--config_file",
        "config.json",
    )
    assert "task_1: " in run.stdout, run.describe()
    folder = project_dir / "data" / "task1"
    assert folder_entries(folder) == sorted(expected_data["task1"]), run.describe()
    # The manifest (and its lock) went to its own mount, kept on the host.
    manifest = project_dir / DEV_MANIFEST
    assert folder_entries(manifest.parent) == [manifest.name, f"{manifest.name}.lock"]
    assert manifest_tasks(manifest) == {"task_1": "/app/data/task1"}
    # The task folder lies outside the manifest's folder: recorded by its container path.
    verify = (
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-w",
        "/app",
        "--entrypoint",
        "dataferry",
        "task1",
        "verify",
        "--all",
    )
    result = docker.compose(*verify, check=False)
    assert result.returncode == 0, result.describe()
    assert "task_1: 1 file(s) intact" in result.stdout, result.describe()
    (folder / "january-small.csv").unlink()
    result = docker.compose(*verify, check=False)
    assert result.returncode == 8, result.describe()
    assert "january-small.csv: missing" in result.stdout, result.describe()
    assert "task_1: 1 of 1 file(s) missing or changed" in result.stdout, result.describe()


@pytest.mark.parametrize("spelling", ["v1", "v2"])
def test_seed_help_command(docker: Docker, dev_image: str, spelling: str) -> None:
    """`docker-compose run task1 task_1.py --help`"""
    result = docker.compose("run", "--rm", "task1", "task_1.py", "--help", spelling=spelling)
    assert "usage: task_1.py" in result.stdout
    assert "--file_save_path" in result.stdout


def test_seed_flag_override_command(
    docker: Docker, dev_image: str, project_dir: Path, tmp_path: Path
) -> None:
    """`docker-compose run task2 task_2.py --file_save_path PATH --remote_file_path PATH ...`"""
    remote = f"{REMOTE_DIR}/february-small.tar.gz"
    docker.compose(
        "run",
        "--rm",
        "task2",
        "task_2.py",
        "--file_save_path",
        "/app/data/task2/override/feb.tar.gz",
        "--remote_file_path",
        remote,
        "--keep_zip_tar_file",
        "true",
        "--overwrite",
        "true",
    )
    saved = project_dir / "data" / "task2" / "override" / "feb.tar.gz"
    assert saved.is_file(), "the archive was not kept where --file_save_path said"
    expected = _sample_file(tmp_path, project_dir, remote).read_bytes()
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(expected).digest()
    assert (saved.parent / "february-small.csv").is_file()


def test_save_path_outside_the_data_volume_is_refused(docker: Docker, dev_image: str) -> None:
    result = docker.compose(
        "run",
        "--rm",
        "task1",
        "task_1.py",
        "--task",
        "task_1",
        "--config_file",
        "config.json",
        "--file_save_path",
        "/tmp/january.csv.zip",
        check=False,
    )
    assert result.returncode == 2, result.describe()
    assert "outside the container's data folder /app/data" in result.output


def test_interactive_shell_command(docker: Docker, dev_image: str) -> None:
    """`docker-compose run --entrypoint /bin/bash -it task1`, in a pseudo-terminal.

    `-it` is Compose v2 syntax (Debian's v1 docker-compose allocates a TTY by
    default and has no -i flag), so this runs the v2 CLI under the name the
    seed uses: the plugin binary is a standalone `docker-compose` too.
    """
    plugin = "/usr/local/lib/docker/cli-plugins/docker-compose"
    command = f"{plugin} run --rm --entrypoint /bin/bash -it task1"
    result = docker.run(
        ["script", "-qec", command, "/dev/null"], input=SHELL_PROBE, timeout=180, check=False
    )
    assert "inside-42" in result.output, result.describe()
    # Debian's v1 spelling of the same.
    result = docker.run(
        ["script", "-qec", "docker-compose run --rm --entrypoint /bin/bash task1", "/dev/null"],
        input=SHELL_PROBE,
        timeout=180,
        check=False,
    )
    assert "inside-42" in result.output, result.describe()


def test_source_is_mounted_for_edit_and_rerun(
    docker: Docker, dev_image: str, project_dir: Path
) -> None:
    probe = project_dir / "src" / "mount_probe.py"
    probe.write_text("print('edited on the host at', __file__)\n")
    try:
        result = docker.compose("run", "--rm", "--no-deps", "task1", "mount_probe.py")
    finally:
        probe.unlink()
    assert "edited on the host at /app/src/mount_probe.py" in result.stdout


def test_metrics_on_the_published_port_while_a_task_runs(docker: Docker, dev_image: str) -> None:
    """task2 retries against a closed port; meanwhile 127.0.0.1:8001/metrics shows it."""
    docker.docker("rm", "--force", "metrics-probe", check=False)
    docker.compose(
        "run",
        "--detach",
        "--service-ports",
        "--name",
        "metrics-probe",
        "-e",
        "REMOTE_PORT=2223",
        "task2",
        "task_2.py",
        "--task",
        "task_2",
        "--config_file",
        "config.json",
        "--metrics_port",
        "8000",
        "--metrics_host",
        "0.0.0.0",  # inside the container: the published port reaches it
        "--max_tries",
        "30",
        "--retry_delay",
        "1",
    )
    try:
        port = docker.docker("port", "metrics-probe", "8000").stdout
        assert "127.0.0.1:8001" in port and "0.0.0.0" not in port, port
        body, deadline = "", time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8001/metrics", timeout=5) as resp:
                    body = resp.read().decode()
                if (
                    'dataferry_retries_total{task="task_2"} 0.0' not in body
                    and 'dataferry_retries_total{task="task_2"}' in body
                ):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        logs = docker.docker("logs", "metrics-probe", check=False).output
        assert 'dataferry_retries_total{task="task_2"}' in body, f"{body}\n{logs[-4000:]}"
        assert 'dataferry_retries_total{task="task_2"} 0.0' not in body, body
        assert "dataferry_bytes_total" in body and "dataferry_rate_bytes_per_second" in body
        with urllib.request.urlopen("http://127.0.0.1:8001/healthz", timeout=5) as resp:
            assert resp.read().decode().strip() == "ok"
    finally:
        docker.docker("rm", "--force", "metrics-probe", check=False)


# ---------------------------------------------------------------- production


def _ensure_sftp(docker: Docker) -> None:
    docker.compose("up", "--detach", "sftp")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = docker.docker(
            "inspect", "--format", "{{.State.Health.Status}}", "sftp-dev", check=False
        ).stdout.strip()
        if state == "healthy":
            return
        time.sleep(1)
    raise AssertionError("the sftp service did not become healthy")


def test_prod_image_runs_as_non_root(docker: Docker, prod_image: str) -> None:
    result = docker.compose(
        "-f", "docker-compose.prod.yaml", "run", "--rm", "--entrypoint", "id", "production-code"
    )
    assert "uid=10001(dataferry)" in result.stdout
    assert "uid=0" not in result.stdout
    config = docker.compose("-f", "docker-compose.prod.yaml", "config").stdout
    assert "restart: on-failure" in config
    assert "ports" not in config


def test_prod_seed_command_fetches_quietly_and_keeps_no_archive(
    docker: Docker,
    prod_image: str,
    dev_image: str,
    expected_data: dict[str, dict[str, str]],
) -> None:
    """`docker-compose -f docker-compose.prod.yaml run production-code task_1.py --task task_1
    --config_file config.json`, pointed at the dev sftp service on the same project network."""
    _ensure_sftp(docker)
    known_hosts_volume = f"{docker.env['COMPOSE_PROJECT_NAME']}_known_hosts"
    result = docker.compose(
        "-f",
        "docker-compose.prod.yaml",
        "run",
        "--rm",
        "-v",
        f"{known_hosts_volume}:/known_hosts:ro",
        "-e",
        "REMOTE_HOST_ADDRESS=sftp",
        "-e",
        "REMOTE_PORT=2222",
        "-e",
        "SSH_KNOWN_HOSTS=/known_hosts/known_hosts",
        "production-code",
        "task_1.py",
        "--task",
        "task_1",
        "--config_file",
        "config.json",
    )
    # WARNING level: no INFO or DEBUG log lines, only the final report on stdout.
    assert "INFO" not in result.stderr and "DEBUG" not in result.stderr, result.describe()
    listing = docker.compose(
        "-f",
        "docker-compose.prod.yaml",
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "production-code",
        "-c",
        "import hashlib, json, os, pathlib; "
        "d = pathlib.Path('/app/data/task1'); "
        "print(json.dumps({p.name: [hashlib.sha256(p.read_bytes()).hexdigest(), "
        "p.stat().st_uid] for p in d.iterdir() if not p.name.startswith('.')}))",
    ).stdout
    files = json.loads(listing.strip().splitlines()[-1])
    assert "january-small.csv.zip" not in files, "the archive was kept"
    assert {name: digest for name, (digest, _) in files.items()} == expected_data["task1"]
    assert {uid for _, uid in files.values()} == {10001}
    # The manifest went to the data volume (the one place uid 10001 writes), beside
    # the task folders; task1's folder holds only its result.
    inventory = docker.compose(
        "-f",
        "docker-compose.prod.yaml",
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "production-code",
        "-c",
        "import json, os; print(json.dumps({d: sorted(os.listdir(d)) "
        "for d in ('/app/data', '/app/data/task1')}))",
    ).stdout
    listed = json.loads(inventory.strip().splitlines()[-1])
    assert listed["/app/data/task1"] == sorted(expected_data["task1"]), listed
    assert set(listed["/app/data"]) == {
        *TASKS,
        "dataferry.manifest.json",
        "dataferry.manifest.json.lock",
    }, listed
    # `dataferry verify --all` in the same setup: intact, then drift once a result is gone.
    verify = (
        "-f",
        "docker-compose.prod.yaml",
        "run",
        "--rm",
        "-T",
        "-w",
        "/app",
        "--entrypoint",
        "dataferry",
        "production-code",
        "verify",
        "--all",
    )
    result = docker.compose(*verify, check=False)
    assert result.returncode == 0, result.describe()
    assert "task_1: 1 file(s) intact" in result.stdout, result.describe()
    docker.compose(
        "-f",
        "docker-compose.prod.yaml",
        "run",
        "--rm",
        "--entrypoint",
        "rm",
        "production-code",
        "/app/data/task1/january-small.csv",
    )
    result = docker.compose(*verify, check=False)
    assert result.returncode == 8, result.describe()
    assert "january-small.csv: missing" in result.stdout, result.describe()


def test_prod_image_has_no_development_server(docker: Docker, prod_image: str) -> None:
    """Dockerfile.prod builds dataferry without dataferry.devserver; demo and serve say so."""
    # The package (server and sample data) is absent; the CLI's guard that says
    # so, dataferry/cli/commands/devserver.py, is meant to be there.
    script = (
        "import importlib.util, pathlib, dataferry; "
        "print(importlib.util.find_spec('dataferry.devserver'), "
        "sorted(str(p) for p in pathlib.Path('/opt/venv').rglob('dataferry/devserver*')))"
    )
    out = docker.docker("run", "--rm", "--entrypoint", "python", prod_image, "-c", script).stdout
    assert out.strip() == "None []", out
    # Through compose: `docker run` against podman 4.3's API reports exit status 0.
    for args in (["demo"], ["serve", "/tmp/x", "--sample", "1M"]):
        result = docker.compose(
            "-f",
            "docker-compose.prod.yaml",
            "run",
            "--rm",
            "-T",
            "--entrypoint",
            "dataferry",
            "production-code",
            *args,
            check=False,
        )
        assert result.returncode == 2, result.describe()
        assert "Traceback" not in result.output, result.describe()
        errors = [line for line in result.output.splitlines() if "dataferry: error:" in line]
        assert errors == [
            "dataferry: error: the development server is not part of this installation "
            "(production image); use the development image or pip install dataferry"
        ], result.describe()


def test_report_image_sizes(docker: Docker, dev_image: str, prod_image: str) -> None:
    sizes = {image: docker.image_size(image) for image in (dev_image, prod_image)}
    for image, size in sizes.items():
        assert 0 < size < 1_000_000_000, (image, size)
    print(json.dumps(sizes))


def test_images_carry_no_secrets_or_dot_files(
    docker: Docker, dev_image: str, prod_image: str, planted_secrets: tuple[str, ...]
) -> None:
    script = (
        "import pathlib; print([str(p) for p in pathlib.Path('/app').rglob('*') "
        "if p.name.startswith('.env') or p.name in ('.git', '.venv', 'tests') "
        f"or p.name in {sorted({Path(name).name for name in planted_secrets})!r} "
        "or p.name == 'keys'])"
    )
    for image in (dev_image, prod_image):
        out = docker.docker("run", "--rm", "--entrypoint", "python", image, "-c", script).stdout
        assert out.strip() == "[]", (image, out)
