"""Planning: which remote files go where (planning.py), and which names from a server
may become local names at all (names.py).

planning.py needs the task settings (pydantic): it loads on first use, so the
command line can use names.py before pydantic has loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .planning import Plan, PlannedFile, TaskLayout, files_in_flight, layout_of, plan_files

_PLANNING = {"Plan", "PlannedFile", "TaskLayout", "files_in_flight", "layout_of", "plan_files"}


def __getattr__(name: str) -> Any:
    if name in _PLANNING:
        return getattr(importlib.import_module(".planning", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Plan", "PlannedFile", "TaskLayout", "files_in_flight", "layout_of", "plan_files"]
