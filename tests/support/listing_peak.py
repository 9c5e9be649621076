"""List one remote folder and print the peak memory it took (run as a subprocess).

``python -m tests.support.listing_peak REMOTE_FOLDER PATTERN``: connects with the
connection settings of the environment (as the CLI does), lists the folder
keeping files that match PATTERN, and prints one JSON object: files kept, the
peak resident set before listing and after (KiB; ru_maxrss is a high-water
mark, so the difference is what the listing added at its worst).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

from dataferry._connection import resolve_connection
from dataferry.sources.ssh import SSHConnector


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def measure(folder: str, pattern: str) -> dict[str, int]:
    connector = SSHConnector(resolve_connection())
    try:
        async with connector.session() as source:
            before = peak_kib()
            listing = await source.find(folder, (pattern,))
            return {"files": len(listing.files), "before_kib": before, "peak_kib": peak_kib()}
    finally:
        await connector.aclose()


def main() -> None:
    folder, pattern = sys.argv[1], sys.argv[2]
    print(json.dumps(asyncio.run(measure(folder, pattern))))


if __name__ == "__main__":
    main()
