"""Progress: live bars on a terminal, periodic log lines when stderr is not one."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataferry.observe.progress import LogProgress
from tests.support.remote import Remote, run_args


def test_bars_on_a_terminal(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "big.bin"
    source.write_bytes(os.urandom(3 * 2**20))
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, *run_args("out.bin", remote.path(source))],
        env={**remote.env(), "TERM": "xterm", "COLUMNS": "120"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(60) == 0
    os.close(primary)
    text = output.decode(errors="replace")
    # The task's line in its final state (file lines show only while a big file
    # is in flight, which a fast run may never draw).
    assert "done: 1 file(s), 3.1 MB" in text and "MB/s" in text
    assert "\x1b[" in text  # drawn with terminal control sequences
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


def test_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress(interval=0.2)
    caplog.set_level(logging.INFO, logger="dataferry.progress")
    progress.plan_ready("t", 1, 10**9)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        progress.bytes_received("t", "/f", 1)
    lines = [r.getMessage() for r in caplog.records if "of 1.0 GB" in r.getMessage()]
    # ~0.5 s at most one line per 0.2 s: 1 to 3 lines, never one per call.
    assert 1 <= len(lines) <= 3
    assert "%" in lines[0] and "/s" in lines[0]
