"""after_fetch: what happens on the server to a file once it is safe here (and the
check that a file of a live drop folder did not change while it downloaded).

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
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath

from .._exceptions import RemotePathError, TransientError
from .._settings import TaskSettings
from ..plan import PlannedFile
from ..plan.names import shown
from ..sources import RemoteFile, Source, SourceConnector

log = logging.getLogger("dataferry.engine")


def still_as_listed(
    settings: TaskSettings, source: Source, remote: RemoteFile
) -> Callable[[], Awaitable[None]] | None:
    """For a live drop folder (min_age, stable_for or ready_marker set): a check, right
    before a download takes its final name, that the file is still as listed.

    The read past the listed end catches most growth, but when the whole file
    fits in the first reads that read goes out at once, before a writer's next
    append. One stat more (a round trip) closes that gap; tasks that declare no
    drop folder skip it (docs/trees.md).
    """
    if not (settings.min_age or settings.stable_for or settings.ready_marker):
        return None

    async def confirm() -> None:
        (now,) = (await source.find(remote.path, ("*",))).files
        if (now.size, now.mtime) != (remote.size, remote.mtime):
            raise TransientError(
                f"{remote.path}: changed during the transfer (listed {remote.size} bytes, "
                f"now {now.size}); it is still being written"
            )

    return confirm


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
