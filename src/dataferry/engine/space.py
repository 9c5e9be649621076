"""Before fetching: does what is left to fetch fit on the destination?

Today only the downloads are counted (minus partial files already held): an
archive's extracted size is known only once its directory has been read.
"""

from __future__ import annotations

from .._exceptions import DestinationError
from ..observe.units import format_bytes
from ..plan import PlannedFile
from ..sinks import Sink


def bytes_to_fetch(sink: Sink, todo: list[PlannedFile]) -> int:
    return sum(max(item.remote.size - sink.partial_bytes(item.relative), 0) for item in todo)


def check_free_space(task: str, sink: Sink, todo: list[PlannedFile]) -> None:
    """Raise DestinationError (exit 7) naming both numbers when todo cannot fit."""
    free = sink.free_space()
    if free is None or not todo:
        return
    needed = bytes_to_fetch(sink, todo)
    if needed > free:
        raise DestinationError(
            f"{task}: not enough free space in {sink.describe()}: {format_bytes(needed)} "
            f"left to fetch, {format_bytes(free)} free; nothing was written"
        )
