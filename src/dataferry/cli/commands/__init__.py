"""One module per command; each handler takes the parsed arguments and returns an exit code.

Only the chosen command's module is imported: `run` opens its TCP connection
before asyncssh, pydantic and the extraction code load (see run.py).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

_HANDLERS = {
    "run": ("run", "run_command"),
    "verify": ("verify", "verify_command"),
    "demo": ("demo", "demo_command"),
    "serve": ("serve", "serve_command"),
    "get": ("get", "get_command"),
    "watch": ("watch", "watch_command"),
}
COMMANDS = tuple(_HANDLERS)


def handler(command: str) -> Callable[[argparse.Namespace], int]:
    module, function = _HANDLERS[command]
    found: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f".{module}", __name__), function
    )
    return found
