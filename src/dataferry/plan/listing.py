"""One listing of a task's remote path through its filters: what the engine plans from.

Builds the task's :class:`TreeFilter`, lists (streamed), drops files whose
ready marker is missing, and with stable_for lists again that much later and
keeps only the files that did not change in between. What was left out is
logged once at INFO as counts, and told to ``report`` file by file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .._settings import TaskSettings
from ..sources import Listing, Source
from .filters import UNSTABLE, TreeFilter, relative_path, unstable
from .names import shown
from .planning import rules_of

log = logging.getLogger("dataferry.plan")

# report(remote path, reason): a file left out, for --dry-run, --json and the observer.
Report = Callable[[str, str], None]


async def list_task(
    source: Source,
    settings: TaskSettings,
    report: Report | None = None,
    *,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> Listing:
    """The files of the task's remote path that its filters keep, sorted."""
    root = settings.remote_file_path

    def tell(relative: str, reason: str) -> None:
        if report is not None:
            report(f"{root.rstrip('/')}/{relative}", reason)

    selection = TreeFilter(rules_of(settings), tell)
    listing = selection.awaiting_markers(await source.find(root, selection))
    if settings.stable_for and listing.is_folder and listing.files:
        log.info(
            "%s: listing %s again in %.0f s to keep only files that stopped changing (stable_for)",
            settings.name,
            shown(root),
            settings.stable_for,
        )
        await _wait(sleep, settings.stable_for)
        again = TreeFilter(rules_of(settings))
        second = again.awaiting_markers(await source.find(root, again))
        listing, changed = unstable(listing, second)
        for file in changed:
            selection.left_out(relative_path(root, file.path), UNSTABLE)
    summary = selection.summary()
    if summary is not None and listing.is_folder:
        log.info("%s: %s %s", settings.name, shown(root), summary)
    return listing


async def _wait(sleep: Callable[[float], object], seconds: float) -> None:
    waited = sleep(seconds)
    if asyncio.iscoroutine(waited):
        await waited
