"""Run a command on a pseudo-terminal, as a user at a terminal would, and keep what it drew.

Used by the display tests (tests/test_display.py) and by the benchmark's
"on a terminal" peer (bench/on_terminal.py).
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

COLUMNS = 120
LINES = 60


@dataclass
class TerminalRun:
    returncode: int
    output: bytes  # everything written to the terminal, control sequences included


def run_on_terminal(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    columns: int = COLUMNS,
    lines: int = LINES,
    timeout: float = 120,
    copy_to: BinaryIO | None = None,
) -> TerminalRun:
    """stdout and stderr on one terminal of columns x lines; stdin empty.

    The output is read until the command closes the terminal; copy_to, when
    given, receives it as it arrives instead of it being kept.
    """
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    try:
        process = subprocess.Popen(
            argv,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=secondary,
        )
    finally:
        os.close(secondary)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            if copy_to is not None:
                copy_to.write(chunk)
            else:
                chunks.append(chunk)
        returncode = process.wait(timeout)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()
    return TerminalRun(returncode, b"".join(chunks))


def final_screen(output: bytes, columns: int = COLUMNS, lines: int = LINES) -> list[str]:
    """What a terminal of that size shows at the end: its lines, trailing blanks removed."""
    import pyte  # the [test] extra

    screen = pyte.Screen(columns, lines)
    pyte.ByteStream(screen).feed(output)
    shown = [line.rstrip() for line in screen.display]
    while shown and not shown[-1]:
        shown.pop()
    return shown
