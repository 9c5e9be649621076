"""A real Dask cluster on loopback: ``dask scheduler`` and ``dask worker`` processes.

The workers run without a nanny, so killing one loses it for good (the test
of a lost worker), and import this checkout's sources (PYTHONPATH). Every
process writes its log to a file in the cluster's folder, which tests read
(e.g. to check that no password reached them). ``stop`` ends them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.remote import REPO
from tests.support.sshd import free_port

DASK = Path(sys.executable).parent / "dask"


def dask_available() -> str | None:
    """None when a real cluster can start here, else why not."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "Dask is not installed (pip install 'dataferry[dask]')"
    if not DASK.exists():
        return f"{DASK} is missing"
    return None


@dataclass
class DaskCluster:
    folder: Path
    port: int
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("wb") as sink:
        return subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )


def start_cluster(folder: Path, workers: int = 2) -> DaskCluster:
    """A scheduler and workers (one thread each) on 127.0.0.1, ready to take tasks."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scheduler = _spawn(
        [
            str(DASK),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
            # Its HTTP server (health, metrics) still starts: loopback, a free port.
            "--dashboard-address",
            "127.0.0.1:0",
        ],
        folder / "scheduler.log",
    )
    cluster = DaskCluster(folder, port, scheduler)
    try:
        for index in range(workers):
            cluster.workers.append(
                _spawn(
                    [
                        str(DASK),
                        "worker",
                        cluster.address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--name",
                        f"w{index}",
                    ],
                    folder / f"worker-{index}.log",
                )
            )
        _wait_for_workers(cluster, workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_workers(cluster: DaskCluster, count: int, timeout: float = 60) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(cluster.address, timeout="2s") as client:  # type: ignore[no-untyped-call]
                client.wait_for_workers(count, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline or cluster.scheduler.poll() is not None:
                raise RuntimeError(
                    f"Dask cluster did not start:\n{cluster.logs()[-2000:]}"
                ) from None
            time.sleep(0.2)


@contextlib.contextmanager
def running_cluster(folder: Path, workers: int = 2) -> Iterator[DaskCluster]:
    cluster = start_cluster(folder, workers)
    try:
        yield cluster
    finally:
        cluster.stop()
