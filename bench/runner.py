"""Time one peer: a subprocess, wall clock from spawn to exit, and its peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peers import Invocation

# GNU time reports its child's ru_maxrss. Measuring through it matters: a
# child forked straight from this (large) Python process would report at
# least our own RSS, because the kernel counts the pre-exec copy of our memory.
GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Timing:
    seconds: float
    returncode: int
    # Peak resident set of the command (or of a descendant it waited for, if
    # larger: a pipeline reports its largest member, not a sum).
    maxrss_kib: int
    timed_out: bool


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_timed(invocation: Invocation, *, cwd: Path, log: Path, timeout: float) -> Timing:
    """Run to completion (killed after ``timeout``); output goes to ``log``."""
    env = os.environ | invocation.env
    expired = threading.Event()

    def expire(pid: int) -> None:
        expired.set()
        _kill_group(pid)

    rss_file = log.with_suffix(".rss")
    argv = invocation.argv
    if os.access(GNU_TIME, os.X_OK):
        argv = [GNU_TIME, "--format", "%M", "--output", str(rss_file), *argv]
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, expire, (process.pid,))
        timer.start()
        try:
            # wait4 rather than Popen.wait: it also returns this child's rusage.
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
    maxrss = _read_rss(rss_file) if argv is not invocation.argv else None
    return Timing(
        elapsed,
        process.returncode,
        usage.ru_maxrss if maxrss is None else maxrss,
        expired.is_set(),
    )


def _read_rss(path: Path) -> int | None:
    """The KiB GNU time wrote (its last line; earlier ones report a signal)."""
    try:
        lines = path.read_text().split()
    except OSError:
        return None
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def log_tail(log: Path, limit: int = 600) -> str:
    text = log.read_text(errors="replace").strip()
    return text[-limit:]
