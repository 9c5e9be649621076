"""``dataferry demo``: the real tasks, unchanged, against an SFTP server inside this process.

A new user has no SSH server. The demo generates sample data at the remote
paths config.json names, serves it on 127.0.0.1 with a host key made for the
run (verified like any other: it is written to a throwaway known_hosts file),
and runs every task of config.json.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dataferry._settings import ConfigFile, resolve_task
from dataferry.engine import TaskReport, run_task
from dataferry.observe import TaskObserver
from dataferry.observe.progress import LogProgress, human_bytes
from dataferry.sources.ssh import SSHConnector

from .sample import generate_sample_dataset
from .server import EmbeddedSFTPServer


async def _serve_and_run(
    config: ConfigFile, size_bytes: int, workdir: Path, observer: TaskObserver
) -> list[TaskReport]:
    tasks = [resolve_task(name, config) for name in config.tasks]
    server_root = workdir / "server-root"
    generate_sample_dataset(server_root, size_bytes=size_bytes)
    known_hosts = workdir / "known_hosts"
    async with EmbeddedSFTPServer(server_root) as server:
        connector = SSHConnector(server.connection_settings(known_hosts))
        try:  # one login for all the tasks, as with `dataferry run --all`
            return [await run_task(settings, connector, observer) for settings in tasks]
        finally:
            await connector.aclose()


def run_demo(config_path: Path, *, size_bytes: int) -> int:
    """Run every task of config_path against the embedded server; print a summary."""
    config = ConfigFile.load(config_path)
    console = Console(file=sys.stdout)
    console.print(
        f"dataferry demo: serving ~{human_bytes(size_bytes)} of generated sample data "
        f"on 127.0.0.1 and running the tasks of {config_path}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dataferry-demo-") as workdir:
        reports = asyncio.run(_serve_and_run(config, size_bytes, Path(workdir), LogProgress()))
    table = Table(title="dataferry demo")
    numeric = ("files", "up to date", "bytes", "seconds")
    for column in ("task", *numeric, "saved to"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for report in reports:
        folders = sorted({str(path.parent) for path in report.files + report.up_to_date})
        table.add_row(
            report.task,
            str(len(report.files)),
            str(len(report.up_to_date)),
            human_bytes(report.bytes_transferred),
            f"{report.seconds:.2f}",
            ", ".join(folders),
        )
    table.add_row(
        "total",
        str(sum(len(report.files) for report in reports)),
        str(sum(len(report.up_to_date) for report in reports)),
        human_bytes(sum(report.bytes_transferred for report in reports)),
        f"{time.monotonic() - started:.2f}",
        "",
    )
    console.print(table)
    if any(report.up_to_date for report in reports):
        console.print("Files already up to date were skipped (delete ./data to fetch them again).")
    return 0
