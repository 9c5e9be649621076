"""after_fetch: what happens on the server to a file once it is safe here.

``keep`` (the default) leaves it. ``delete`` removes it; ``move:/folder`` renames
it into /folder, keeping its path below remote_file_path (never over an
existing file). The action runs only after the task's files are committed,
verified and recorded in the manifest, on its own session; the file is
checked first: one that changed on the server since it was fetched is left
there. A failing action never touches the local copy: it is logged as a
warning, and the task still succeeds (its data is safe here).
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

from .._exceptions import RemotePathError, TransientError
from .._settings import TaskSettings
from ..plan import PlannedFile
from ..plan.names import shown
from ..sources import Source, SourceConnector

log = logging.getLogger("dataferry.engine")


async def act_after_fetch(
    settings: TaskSettings, connector: SourceConnector, files: list[PlannedFile]
) -> int:
    """Apply the task's after_fetch to files (all safe here); the number that failed."""
    if settings.after_fetch == "keep" or not files:
        return 0
    try:
        async with connector.session() as source:
            source.request_timeout = settings.request_timeout
            failed = 0
            for item in files:
                failed += not await _act(settings, source, item)
            return failed
    except (RemotePathError, TransientError) as exc:
        log.warning(
            "%s: after_fetch %s not done for %d file(s): %s",
            settings.name,
            settings.after_fetch,
            len(files),
            exc,
        )
        return len(files)


async def _act(settings: TaskSettings, source: Source, item: PlannedFile) -> bool:
    remote = item.remote
    try:
        now = (await source.find(remote.path, ("*",))).files
        if now and (now[0].size, now[0].mtime) != (remote.size, remote.mtime):
            log.warning(
                "%s: after_fetch: %s changed on the server since it was fetched; left there",
                settings.name,
                shown(remote.path),
            )
            return False
        if settings.after_fetch == "delete":
            await source.remove(remote.path)
            log.info(
                "%s: deleted %s on the server (after_fetch)", settings.name, shown(remote.path)
            )
        else:
            folder = settings.after_fetch.removeprefix("move:")
            target = str(PurePosixPath(folder) / item.relative)
            await source.move(remote.path, target)
            log.info(
                "%s: moved %s to %s on the server (after_fetch)",
                settings.name,
                shown(remote.path),
                shown(target),
            )
        return True
    except (RemotePathError, TransientError) as exc:
        log.warning("%s: after_fetch failed, the fetched file is kept: %s", settings.name, exc)
        return False
