"""``dataferry serve DIR``: the embedded read-only SFTP server, for development."""

from __future__ import annotations

import argparse
import os

from .. import configure_logging
from .devserver import load_devserver


def serve_command(args: argparse.Namespace) -> int:
    devserver = load_devserver()
    configure_logging("INFO")
    devserver.serve(
        args.directory,
        host=args.host,
        port=args.port,
        username=args.username,
        password=os.environ.get("DATAFERRY_SERVE_PASSWORD") or None,
        known_hosts_out=args.known_hosts_out,
        env_out=args.env_out,
        sample_size=args.sample,
    )
    return 0
