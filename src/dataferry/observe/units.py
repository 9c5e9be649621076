"""Sizes in words: one convention for every message, and the one parser for sizes typed.

Decimal units throughout (1 kB = 1000 B, 1 MB = 10**6 B, like ``demo --size 50M``,
disk vendors and rich's download columns), so the same amount never reads
"1.1 GB" in one place and "1.0 GiB" in another. Typed sizes also accept binary
units spelled out (``64GiB``) for those who think in them.
"""

from __future__ import annotations

import re

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")

_FACTORS: dict[str, int] = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
    "PI": 2**50,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGTP]I?)?B?\s*$", re.IGNORECASE)


def format_bytes(count: float) -> str:
    """``format_bytes(1_100_000_000) == "1.1 GB"``; whole bytes below 1 kB."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{value:.0f} B"
            # 999.96 MB would print as "1000.0 MB": step up instead.
            if abs(value) >= 999.95 and unit != _UNITS[-1]:
                value /= 1000
                continue
            return f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    return f"{format_bytes(bytes_per_second)}/s"


def parse_size(text: str) -> int:
    """``"64G"`` -> 64 * 10**9; ``"64GiB"`` -> 64 * 2**30; ``"250000"`` -> 250000.

    Raises ValueError with a message naming the accepted forms.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"expected a size like 64G, 50M or 250000, got {text!r}")
    number, unit = match.group(1), (match.group(2) or "").upper()
    return int(float(number) * _FACTORS[unit])


__all__ = ["format_bytes", "format_rate", "parse_size"]
