"""The Prometheus endpoint: events in, numbers out over real HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dataferry.observe import ObserverGroup
from dataferry.observe.metrics import STATES, MetricsServer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[MetricsServer]:
    metrics = MetricsServer(clock=clock)
    metrics.start("127.0.0.1", 0)
    try:
        yield metrics
    finally:
        metrics.stop()


def fetch(server: MetricsServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, content_type, body = fetch(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(server: MetricsServer, name: str, task: str, **labels: str) -> float:
    key = (name, tuple(sorted({"task": task, **labels}.items())))
    return samples(server)[key]


def current_state(server: MetricsServer, task: str) -> str:
    found = samples(server)
    on = [
        s
        for s in STATES
        if found[("dataferry_state", (("dataferry_state", s), ("task", task)))] == 1
    ]
    assert len(on) == 1, on
    return on[0]


def test_healthz(server: MetricsServer) -> None:
    status, content_type, body = fetch(server, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert content_type.startswith("text/plain")


def test_unknown_path_is_404(server: MetricsServer) -> None:
    status, _, _ = fetch(server, "/nope")
    assert status == 404


def test_no_task_yet_serves_empty_families(server: MetricsServer) -> None:
    status, _, body = fetch(server, "/metrics")
    assert status == 200
    assert "# TYPE dataferry_bytes_done gauge" in body
    assert 'task="' not in body


def test_a_task_run_is_reflected(server: MetricsServer, clock: FakeClock) -> None:
    server.task_started("task_2")
    assert current_state(server, "task_2") == "starting"
    server.state_changed("task_2", "connecting")
    server.state_changed("task_2", "listing")
    server.plan_ready("task_2", total_files=2, total_bytes=3000)
    server.state_changed("task_2", "transferring")
    assert current_state(server, "task_2") == "transferring"
    assert value(server, "dataferry_bytes_total", "task_2") == 3000
    assert value(server, "dataferry_files_total", "task_2") == 2

    # The second file resumes a partial download at 500 bytes.
    server.file_started("task_2", "/remote/a.csv", 1000, 0)
    server.file_started("task_2", "/remote/b.csv", 2000, 500)
    clock.now += 1.0
    server.bytes_received("task_2", "/remote/a.csv", 400)
    server.bytes_received("task_2", "/remote/b.csv", 600)
    clock.now += 1.0
    server.bytes_received("task_2", "/remote/a.csv", 600)
    server.file_finished("task_2", "/remote/a.csv", "/data/a.csv", 1000)

    assert value(server, "dataferry_bytes_done", "task_2") == 1000 + 500 + 600
    assert value(server, "dataferry_files_done", "task_2") == 1
    # 1600 bytes received in the 2 s since the transfer started.
    assert value(server, "dataferry_rate_bytes_per_second", "task_2") == pytest.approx(800)

    server.retrying("task_2", 1, 3, 0.5, "connection lost")
    server.state_changed("task_2", "connecting")
    assert value(server, "dataferry_retries_total", "task_2") == 1
    assert current_state(server, "task_2") == "connecting"

    server.file_started("task_2", "/remote/b.csv", 2000, 1100)
    server.bytes_received("task_2", "/remote/b.csv", 900)
    server.file_finished("task_2", "/remote/b.csv", "/data/b.csv", 2000)
    server.state_changed("task_2", "extracting")
    server.state_changed("task_2", "done")
    server.task_finished("task_2", 2, 3000 - 500, 2.5)

    assert value(server, "dataferry_bytes_done", "task_2") == 3000
    assert value(server, "dataferry_files_done", "task_2") == 2
    assert value(server, "dataferry_errors_total", "task_2") == 0
    assert value(server, "dataferry_rate_bytes_per_second", "task_2") == 0
    assert current_state(server, "task_2") == "done"


def test_rate_forgets_old_bytes(server: MetricsServer, clock: FakeClock) -> None:
    server.task_started("task_1")
    server.plan_ready("task_1", 1, 10**9)
    server.state_changed("task_1", "transferring")
    server.file_started("task_1", "/r/big", 10**9, 0)
    for _ in range(10):
        clock.now += 1.0
        server.bytes_received("task_1", "/r/big", 1_000_000)
    # 10 MB over 10 s, but only the last 5 s count: 5 MB / 5 s.
    assert value(server, "dataferry_rate_bytes_per_second", "task_1") == pytest.approx(1_000_000)
    clock.now += 60
    assert value(server, "dataferry_rate_bytes_per_second", "task_1") == 0


def test_failure_counts_an_error(server: MetricsServer) -> None:
    server.task_started("task_3")
    server.state_changed("task_3", "connecting")
    server.state_changed("task_3", "failed")
    server.error("task_3", "authentication failed")
    assert value(server, "dataferry_errors_total", "task_3") == 1
    assert current_state(server, "task_3") == "failed"


def test_several_tasks_are_labelled_apart(server: MetricsServer) -> None:
    for task, size in (("task_1", 10), ("task_2", 20)):
        server.task_started(task)
        server.plan_ready(task, 1, size)
        server.file_started(task, f"/r/{task}", size, 0)
        server.bytes_received(task, f"/r/{task}", size)
        server.file_finished(task, f"/r/{task}", f"/l/{task}", size)
        server.task_finished(task, 1, size, 0.1)
    assert value(server, "dataferry_bytes_done", "task_1") == 10
    assert value(server, "dataferry_bytes_done", "task_2") == 20
    assert current_state(server, "task_1") == "done"


def test_events_from_another_thread_while_scraping(server: MetricsServer) -> None:
    server.task_started("task_1")
    server.plan_ready("task_1", 4, 4 * 100_000)

    def feed() -> None:
        for n in range(4):
            path = f"/r/{n}"
            server.file_started("task_1", path, 100_000, 0)
            for _ in range(100):
                server.bytes_received("task_1", path, 1000)
            server.file_finished("task_1", path, f"/l/{n}", 100_000)

    feeder = threading.Thread(target=feed)
    feeder.start()
    while feeder.is_alive():
        assert 0 <= value(server, "dataferry_bytes_done", "task_1") <= 400_000
    feeder.join()
    assert value(server, "dataferry_bytes_done", "task_1") == 400_000
    assert value(server, "dataferry_files_done", "task_1") == 4


def test_works_inside_an_observer_group(server: MetricsServer) -> None:
    group = ObserverGroup([server])
    group.task_started("task_1")
    group.plan_ready("task_1", 3, 30)
    assert value(server, "dataferry_files_total", "task_1") == 3


def test_own_registry_not_the_global_one() -> None:
    first, second = MetricsServer(), MetricsServer()
    first.task_started("task_1")
    assert first.registry is not second.registry
    assert REGISTRY.get_sample_value("dataferry_bytes_done", {"task": "task_1"}) is None
    assert second.registry.get_sample_value("dataferry_bytes_done", {"task": "task_1"}) is None
    assert first.registry.get_sample_value("dataferry_bytes_done", {"task": "task_1"}) == 0


def test_stop_frees_the_port_and_start_twice_fails() -> None:
    metrics = MetricsServer()
    metrics.start("127.0.0.1", 0)
    port = metrics.port
    with pytest.raises(RuntimeError):
        metrics.start("127.0.0.1", 0)
    metrics.stop()
    metrics.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # The same port can be bound again.
    again = MetricsServer()
    again.start("127.0.0.1", port)
    try:
        assert fetch(again, "/healthz")[0] == 200
    finally:
        again.stop()


def test_metrics_listen_on_loopback_and_a_busy_port_is_exit_2(tmp_path: Path) -> None:
    """The endpoint has no authentication: loopback unless --metrics_host says
    otherwise; a port already in use is a configuration error, not a bug."""
    import socket
    import subprocess
    import sys

    from tests.support.remote import REPO

    server = MetricsServer()
    server.start(port=0)
    try:
        assert server._httpd is not None
        assert server._httpd.server_address[0] == "127.0.0.1"
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dataferry",
                    "run",
                    "t",
                    "--file_save_path",
                    "x",
                    "--remote_file_path",
                    "/x",
                    "--metrics_port",
                    str(port),
                ],
                env={
                    "PYTHONPATH": str(REPO / "src"),
                    "REMOTE_HOST_ADDRESS": "127.0.0.1",
                    "REMOTE_PORT": "1",
                    "USERNAME": "u",
                    "PASSWORD": "p",
                    "PATH": "/usr/bin:/bin",
                },
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
