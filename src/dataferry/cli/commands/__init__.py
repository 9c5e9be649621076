"""One module per command; each handler takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import demo, run, serve, verify

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run.run_command,
    "verify": verify.verify_command,
    "demo": demo.demo_command,
    "serve": serve.serve_command,
}
