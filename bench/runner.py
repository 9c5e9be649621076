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


@dataclass(frozen=True)
class Timing:
    seconds: float
    returncode: int
    # ru_maxrss from wait4(): the process's peak resident set, or that of a
    # descendant it waited for if larger (not a sum over concurrent processes).
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

    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            invocation.argv,
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
    return Timing(elapsed, process.returncode, usage.ru_maxrss, expired.is_set())


def log_tail(log: Path, limit: int = 600) -> str:
    text = log.read_text(errors="replace").strip()
    return text[-limit:]
