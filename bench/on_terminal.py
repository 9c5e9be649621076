"""``python -m bench.on_terminal CMD ARGS...``: run CMD on a pseudo-terminal (120x60).

The benchmark's "on a terminal" peer: what a user at a terminal sees drawn
goes to this process's stdout (the run's log); the exit code is CMD's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.terminal import run_on_terminal


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.on_terminal CMD [ARGS...]", file=sys.stderr)
        return 2
    result = run_on_terminal(
        argv, env=dict(os.environ), cwd=Path.cwd(), timeout=3600, copy_to=sys.stdout.buffer
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
