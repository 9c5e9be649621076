"""The development server's commands need dataferry.devserver, which the production
image leaves out (Dockerfile.prod): say so in one line instead of failing on an import."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..._exceptions import ConfigError

DEVSERVER_MISSING = (
    "the development server is not part of this installation (production image); "
    "use the development image or pip install dataferry"
)


def load_devserver() -> ModuleType:
    try:
        return importlib.import_module("dataferry.devserver")
    except ModuleNotFoundError as exc:
        if exc.name == "dataferry.devserver" or (exc.name or "").startswith("dataferry.devserver."):
            raise ConfigError(DEVSERVER_MISSING) from None
        raise
