"""``--dry-run`` and ``--json`` for ``run`` and the seed scripts: how a run reports,
and whether it acts at all."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...observe import ObserverGroup, TaskObserver
from ...observe.jsonlines import JsonLines
from ...observe.progress import human_bytes
from ...plan.names import shown

if TYPE_CHECKING:
    from ..._settings import TaskSettings
    from ...sources import SourceConnector


@dataclass
class RunMode:
    dry_run: bool = False
    json: JsonLines | None = None  # --json: events as JSON lines on stdout
    printed: list[str] = field(default_factory=list)
    list_paths: bool = False  # --list: every path in the summary

    @classmethod
    def of(cls, args: argparse.Namespace) -> RunMode:
        return cls(
            dry_run=bool(getattr(args, "dry_run", False)),
            json=JsonLines(sys.stdout) if getattr(args, "json", False) else None,
            list_paths=bool(getattr(args, "list", False)),
        )

    def observer(self, observer: TaskObserver) -> TaskObserver:
        """The task's observer, plus the JSON lines when asked for."""
        return observer if self.json is None else ObserverGroup([observer, self.json])


async def dry_run(
    settings: TaskSettings, connector: SourceConnector, observer: TaskObserver, mode: RunMode
) -> None:
    """Print the plan of one task (each file to fetch, each skip and why, total bytes)."""
    from ...engine.preview import preview_task

    preview = await preview_task(settings, connector, observer)
    if mode.json is not None:
        for item in preview.fetch:
            mode.json.emit(
                "plan",
                settings.name,
                remote=item.remote.path,
                local=str(preview.folder / item.relative),
                bytes=item.remote.size,
            )
        mode.json.emit(
            "summary",
            settings.name,
            dry_run=True,
            files=len(preview.fetch),
            bytes=preview.total_bytes,
            skipped=len(preview.skipped),
        )
        return
    print(
        f"{settings.name}: dry run, nothing written: {len(preview.fetch)} file(s) to fetch, "
        f"{human_bytes(preview.total_bytes)}; {len(preview.skipped)} skipped"
    )
    for item in preview.fetch:
        local = shown(str(preview.folder / item.relative))
        print(f"  fetch {shown(item.remote.path)} -> {local} ({human_bytes(item.remote.size)})")
    for remote_path, reason in preview.skipped:
        print(f"  skip  {shown(remote_path)}: {reason}")
