"""``dataferry demo``: every task of config.json against the embedded server."""

from __future__ import annotations

import argparse

from .. import configure_logging
from .devserver import load_devserver


def demo_command(args: argparse.Namespace) -> int:
    devserver = load_devserver()
    configure_logging("WARNING")
    code: int = devserver.run_demo(args.config, size_bytes=args.size)
    return code
