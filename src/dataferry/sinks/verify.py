"""``verify`` for a destination that is a URL (``s3://``): results checked through the sink.

The same rules as manifest/verify.py for a folder: complete entries only; with
rehash every result is read back and its sha256 compared; without, its size and
recorded mtime (kept with the object) are compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..manifest.model import TaskRecord
from ..manifest.verify import CONTENT_CHANGED, MISSING
from . import sink_factory_for
from .base import Sink


@dataclass(frozen=True)
class ObjectDrift:
    """A recorded result that is no longer as recorded, at a URL."""

    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.problem}"


def verify_in_sink(record: TaskRecord, *, rehash: bool = True) -> list[ObjectDrift]:
    """Every result of record's complete entries that is missing or changed."""
    sink: Sink = sink_factory_for(record.destination)(Path(record.destination))
    drifts: list[ObjectDrift] = []
    for entry in record.entries.values():
        if not entry.complete:
            continue
        for result in entry.results:
            held = sink.held(result.path)
            problem: str | None = None
            if held is None:
                problem = MISSING
            elif held.size != result.size:
                problem = f"size changed (recorded {result.size} bytes, found {held.size})"
            elif rehash:
                digest = hashlib.sha256()
                with sink.open_result(result.path) as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                if digest.hexdigest() != result.sha256:
                    problem = CONTENT_CHANGED
            elif held.mtime != result.mtime:
                problem = f"modified (mtime {held.mtime} differs from recorded {result.mtime})"
            if problem is not None:
                drifts.append(ObjectDrift(sink.describe(result.path), problem))
    return sorted(drifts, key=lambda drift: drift.location)
