"""Splitting a task's files into shards of about equal bytes (pure logic)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def shard_by_bytes(sizes: Sequence[tuple[str, int]], count: int) -> list[list[str]]:
    """Keys split into at most count shards of about equal total size.

    Largest first, each into the lightest shard so far (LPT): no shard holds
    more than the lightest one plus one file. A file is never split (an
    archive goes whole to one worker); every key lands in exactly one shard,
    and empty shards are dropped. Ties are broken by key, so the same
    listing always gives the same shards.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    heap: list[tuple[int, int]] = [(0, index) for index in range(count)]
    shards: list[list[str]] = [[] for _ in range(count)]
    for key, size in sorted(sizes, key=lambda pair: (-pair[1], pair[0])):
        total, index = heapq.heappop(heap)
        shards[index].append(key)
        heapq.heappush(heap, (total + size, index))
    return [sorted(shard) for shard in shards if shard]
