"""Names the command line shares with the settings layer, importable without pydantic.

The command line builds its parser (and starts connecting) before the task
settings module, which loads pydantic, has finished importing.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_FILE = Path("config.json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
