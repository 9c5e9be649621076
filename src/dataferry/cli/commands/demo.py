"""``dataferry demo``: every task of config.json against the embedded server."""

from __future__ import annotations

import argparse

from .. import configure_logging


def demo_command(args: argparse.Namespace) -> int:
    from ..._demo import run_demo

    configure_logging("WARNING")
    return run_demo(args.config, size_bytes=args.size)
