"""Results: medians (min-max), dataferry's ratio to each peer, targets, JSON and tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.plan import MEMORY_TARGET_MB, Row

DATAFERRY = "dataferry"


@dataclass
class PeerResult:
    name: str
    label: str
    command: str = ""  # the first run's command line, for the record
    times: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def peak_rss_mb(self) -> float | None:
        return max(self.peak_rss_kib) / 1024 if self.peak_rss_kib else None


@dataclass
class RowResult:
    row: Row
    title: str
    total_bytes: int
    peers: dict[str, PeerResult]
    proxy_bytes_to_client: int | None = None  # far rows: what the delay proxy forwarded

    def ratio(self, peer: str) -> float | None:
        mine = self.peers.get(DATAFERRY)
        other = self.peers.get(peer)
        if mine is None or other is None or mine.median is None or not other.median:
            return None
        return mine.median / other.median


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "openssh": _first_line(["ssh", "-V"]),
        "rclone": _first_line(["rclone", "version"]),
    }


def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


# --- JSON ------------------------------------------------------------------------


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def to_json(
    results: list[RowResult], machine: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    rows = []
    for res in results:
        peers = {
            name: {
                "label": p.label,
                "median_s": _round(p.median),
                "min_s": _round(min(p.times)) if p.times else None,
                "max_s": _round(max(p.times)) if p.times else None,
                "times_s": [round(t, 3) for t in p.times],
                "peak_rss_mb": _round(p.peak_rss_mb, 1),
                "failures": p.failures,
                "command": p.command,
            }
            for name, p in res.peers.items()
        }
        rows.append(
            {
                "key": res.row.key,
                "workload": res.row.workload,
                "title": res.title,
                "link": res.row.link,
                "bytes": res.total_bytes,
                "proxy_bytes_to_client": res.proxy_bytes_to_client,
                "peers": peers,
                "ratios": {n: _round(res.ratio(n)) for n in res.peers if n != DATAFERRY},
                "targets": [
                    {
                        "peer": t.peer,
                        "max_ratio": t.max_ratio,
                        "ratio": _round(res.ratio(t.peer)),
                        "met": _met(res.ratio(t.peer), t.max_ratio),
                    }
                    for t in res.row.targets
                ],
                "issue_reference_s": res.row.issue_reference,
            }
        )
    peak = dataferry_peak_mb(results)
    return {
        "machine": machine,
        "settings": settings,
        "rows": rows,
        "dataferry_peak_rss_mb": _round(peak, 1),
        "memory_target_mb": MEMORY_TARGET_MB,
        "memory_met": _met(peak, MEMORY_TARGET_MB),
    }


def dataferry_peak_mb(results: list[RowResult]) -> float | None:
    peaks = [
        p.peak_rss_mb
        for r in results
        if (p := r.peers.get(DATAFERRY)) is not None and p.peak_rss_mb is not None
    ]
    return max(peaks) if peaks else None


def _met(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


# --- tables ------------------------------------------------------------------------

HEADER = ("workload", "link", "peer", "median s", "min-max s", "dataferry ratio", "target", "met")


def _cells(res: RowResult) -> list[tuple[str, ...]]:
    targets = {t.peer: t.max_ratio for t in res.row.targets}
    lines = []
    for i, (name, p) in enumerate(res.peers.items()):
        first = (res.title, res.row.link) if i == 0 else ("", "")
        if p.median is None:
            timing = ("FAILED", _short(p.failures[0]) if p.failures else "not run")
        else:
            failed = f" ({len(p.failures)} failed)" if p.failures else ""
            timing = (f"{p.median:.2f}{failed}", f"{min(p.times):.2f}-{max(p.times):.2f}")
        if name == DATAFERRY:
            rss = p.peak_rss_mb
            extra = ("", f"peak RSS {rss:.0f} MB" if rss is not None else "", "")
        else:
            ratio = res.ratio(name)
            limit = targets.get(name)
            met = _met(ratio, limit) if limit is not None else None
            extra = (
                "-" if ratio is None else f"{ratio:.2f}",
                "" if limit is None else f"<= {limit:g}",
                "" if limit is None else {True: "yes", False: "NO", None: "?"}[met],
            )
        lines.append((*first, p.label, *timing, *extra))
    return lines


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_table(results: list[RowResult]) -> str:
    rows = [HEADER] + [cells for res in results for cells in _cells(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append(_memory_line(results))
    return "\n".join(out)


def markdown_table(results: list[RowResult]) -> str:
    out = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for res in results:
        for cells in _cells(res):
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out.append("")
    out.append(_memory_line(results))
    return "\n".join(out)


def _memory_line(results: list[RowResult]) -> str:
    peak = dataferry_peak_mb(results)
    if peak is None:
        return "dataferry peak RSS: not measured"
    verdict = "yes" if peak <= MEMORY_TARGET_MB else "NO"
    return (
        f"dataferry peak RSS over all runs: {peak:.0f} MB "
        f"(target < {MEMORY_TARGET_MB:.0f} MB: {verdict})"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
