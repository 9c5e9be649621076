"""Before fetching: does what is left to fetch, and what its zips unpack to, fit?

Downloads count their remote size minus a partial file already held. A zip
declares what it unpacks to in its central directory, at its end: one open
and one read of the tail (two for a large directory) per zip. Round trips
cost ~30 ms each on a far link, so the zips are read only when the extraction
limits (max_extract_bytes, max_compression_ratio: what extraction would refuse
beyond) leave room for them not to fit. Other archives (tar.gz...) tell their
size only by being read: they count as their download.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from .._exceptions import DataferryError, DestinationError
from ..observe.units import format_bytes
from ..plan import PlannedFile
from ..plan.names import shown
from ..sinks import Sink
from ..sources import RemoteFile, Source

# The end-of-central-directory record (22 bytes) plus the longest comment.
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_CENTRAL_SIGNATURE = b"PK\x01\x02"
TAIL_BYTES = _EOCD.size + 0xFFFF
# A bigger central directory (about 300,000 entries) is not read: size unknown.
MAX_DIRECTORY_BYTES = 16 * 2**20
PROBES_IN_FLIGHT = 8

log = logging.getLogger("dataferry.engine")


def bytes_to_fetch(sink: Sink, todo: list[PlannedFile]) -> int:
    return sum(max(item.remote.size - sink.partial_bytes(item.relative), 0) for item in todo)


async def check_free_space(
    task: str,
    sink: Sink,
    source: Source,
    todo: list[PlannedFile],
    *,
    max_extract_bytes: int,
    max_ratio: float,
) -> None:
    """Raise DestinationError (exit 7) naming the numbers when todo cannot fit."""
    free = sink.free_space()
    if free is None or not todo:
        return
    needed = bytes_to_fetch(sink, todo)
    if needed > free:
        raise DestinationError(
            f"{task}: not enough free space in {sink.describe()}: {format_bytes(needed)} "
            f"left to fetch, {format_bytes(free)} free; nothing was written"
        )
    zips = [item.remote for item in todo if item.relative.lower().endswith(".zip")]
    at_most = sum(min(max_extract_bytes, int(file.size * max_ratio)) for file in zips)
    if needed + at_most <= free:
        return  # fits whatever the zips declare: no round trips
    gate = asyncio.Semaphore(PROBES_IN_FLIGHT)

    async def probe(file: RemoteFile) -> int | None:
        async with gate:
            return await zip_extracted_size(source, file)

    sizes = await asyncio.gather(*(probe(file) for file in zips))
    extracted = sum(size for size in sizes if size is not None)
    if needed + extracted > free:
        raise DestinationError(
            f"{task}: not enough free space in {sink.describe()}: {format_bytes(needed)} "
            f"left to fetch, and its zip archives unpack to {format_bytes(extracted)}; "
            f"{format_bytes(free)} free; nothing was written"
        )


async def zip_extracted_size(source: Source, file: RemoteFile) -> int | None:
    """The total its central directory declares; None when unknown (not a zip, a
    directory too large, or the server failing us: the check is a courtesy, never
    a cause; the download itself meets any server error again and reports it)."""
    if file.size < _EOCD.size:
        return None
    try:
        reader = await source.open(file)
    except DataferryError as exc:
        log.debug("free space: %s not read (%s)", shown(file.path), exc)
        return None
    try:
        start = max(file.size - TAIL_BYTES, 0)
        tail = await reader.read_range(start, file.size - start)
        found = _directory_span(tail, start)
        if found is None:
            return None
        offset, length = found
        if length > MAX_DIRECTORY_BYTES or offset < 0 or offset + length > file.size:
            return None
        if offset >= start:
            directory = tail[offset - start : offset - start + length]
        else:
            directory = await reader.read_range(offset, length)
        return declared_total(directory)
    except (DataferryError, struct.error) as exc:
        log.debug("free space: the zip directory of %s not read (%s)", shown(file.path), exc)
        return None
    finally:
        reader.close_later()


def _directory_span(tail: bytes, tail_start: int) -> tuple[int, int] | None:
    """(offset, length) of the central directory, from the records at the end."""
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        return None
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(tail, at)
    if entries != 0xFFFF and size != 0xFFFFFFFF:
        # Located from the end record, not the recorded offset: data prepended
        # to the zip (a self-extractor) shifts every recorded offset.
        return tail_start + at - size, size
    locator = at - _ZIP64_LOCATOR.size
    if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR_SIGNATURE:
        return None
    record = locator - _ZIP64_EOCD.size
    if record < 0 or tail[record : record + 4] != _ZIP64_EOCD_SIGNATURE:
        return None
    fields = _ZIP64_EOCD.unpack_from(tail, record)
    size64 = fields[8]
    return tail_start + record - size64, size64


def declared_total(directory: bytes) -> int | None:
    """Sum of the uncompressed sizes the central directory's entries declare."""
    total, at = 0, 0
    while at < len(directory):
        if directory[at : at + 4] != _CENTRAL_SIGNATURE or at + _CENTRAL.size > len(directory):
            return None
        fields = _CENTRAL.unpack_from(directory, at)
        size, name_length, extra_length, comment_length = (
            fields[9],
            fields[10],
            fields[11],
            fields[12],
        )
        extra_at = at + _CENTRAL.size + name_length
        extra = directory[extra_at : extra_at + extra_length]
        if size == 0xFFFFFFFF:
            size64 = _zip64_size(extra)
            if size64 is None:
                return None
            size = size64
        total += size
        at = extra_at + extra_length + comment_length
    return total


def _zip64_size(extra: bytes) -> int | None:
    """The uncompressed size in the zip64 extra field (its first value)."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 0x0001 and length >= 8:
            value: int = struct.unpack_from("<Q", extra, at + 4)[0]
            return value
        at += 4 + length
    return None
