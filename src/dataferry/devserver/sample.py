"""Deterministic sample dataset shaped like the real event-analytics exports.

``dataferry demo`` and ``dataferry serve --sample`` serve this tree from the
embedded SFTP server, at exactly the remote paths the shipped config.json
names. The same ``(size_bytes, seed)`` always gives byte-identical files: every
timestamp, owner and compression header that archives would otherwise take
from the clock or the machine is pinned.

Generation streams in chunks (nothing holds a whole file in memory) and reuses
a pool of pre-rendered row tails, so a few MB take milliseconds and ~260 MB
stays within seconds plus the cost of compressing the archived share.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import io
import os
import random
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Literal

__all__ = [
    "CSV_HEADER",
    "FEBRUARY_REMOTE",
    "JANUARY_REMOTE",
    "MARCH_REMOTE_DIR",
    "REMOTE_BASE",
    "SampleDataset",
    "SampleFile",
    "generate_sample_dataset",
    "write_event_csv",
]

REMOTE_BASE = "/home/sofascore_academy/l2_dataset"
JANUARY_REMOTE = f"{REMOTE_BASE}/january-small.csv.zip"
FEBRUARY_REMOTE = f"{REMOTE_BASE}/february-small.tar.gz"
MARCH_REMOTE_DIR = f"{REMOTE_BASE}/march-small"

CSV_HEADER = (
    "event_date,event_timestamp,event_name,user_pseudo_id,geo_country,app_info_version,"
    "platform,firebase_experiments,id,item_name,previous_first_open_count,name,event_id,status"
)

YEAR = 2024
# Fixed archive timestamps: zip stores local DOS time, tar stores epoch seconds.
_ZIP_DATE_TIME = (YEAR, 4, 1, 0, 0, 0)
_TAR_MTIME = int(datetime(YEAR, 4, 1, tzinfo=UTC).timestamp())
_DAY_US = 86_400 * 1_000_000
# Row tails rendered once per file; a power of two so indexing is a mask.
_POOL_SIZE = 4096
_JITTER_SIZE = 1024
_CHUNK_ROWS = 8192

Kind = Literal["csv", "zip", "tar.gz", "other"]


@dataclass(frozen=True)
class SampleFile:
    """One file of the sample tree, as the server and the local disk see it."""

    remote_path: str  # POSIX, absolute, as the SFTP client sees it
    local_path: Path
    kind: Kind
    size: int  # bytes on disk (compressed size for archives)
    csv_bytes: int  # uncompressed CSV bytes it holds; 0 for files a task skips
    members: tuple[str, ...] = ()  # CSV names inside an archive


@dataclass(frozen=True)
class SampleDataset:
    """What :func:`generate_sample_dataset` wrote."""

    root: Path  # plays the server's "/"
    files: tuple[SampleFile, ...]
    size_bytes: int  # requested CSV size
    seed: int

    @property
    def remote_paths(self) -> list[str]:
        return [f.remote_path for f in self.files]

    @property
    def local_paths(self) -> list[Path]:
        return [f.local_path for f in self.files]

    @property
    def total_csv_bytes(self) -> int:
        """Uncompressed CSV bytes over all files (close to ``size_bytes``)."""
        return sum(f.csv_bytes for f in self.files)

    @property
    def total_bytes(self) -> int:
        """Bytes on disk, i.e. what a full download moves over the wire."""
        return sum(f.size for f in self.files)

    def file(self, remote_path: str) -> SampleFile:
        for f in self.files:
            if f.remote_path == remote_path:
                return f
        raise KeyError(remote_path)


# --- row content -------------------------------------------------------------

_EVENTS: tuple[tuple[str, int], ...] = (
    ("screen_view", 46),
    ("user_engagement", 16),
    ("session_start", 10),
    ("select_content", 8),
    ("notification_receive", 6),
    ("first_open", 5),
    ("notification_open", 3),
    ("app_remove", 3),
    ("app_update", 2),
    ("os_update", 1),
)
# Non-ASCII and an apostrophe on purpose: real exports carry them.
_COUNTRIES: tuple[tuple[str, int], ...] = (
    ("Croatia", 18),
    ("Brazil", 12),
    ("Serbia", 8),
    ("Bosnia & Herzegovina", 6),
    ("Poland", 6),
    ("Italy", 6),
    ("Spain", 5),
    ("Germany", 5),
    ("United States", 5),
    ("India", 5),
    ("Indonesia", 4),
    ("Türkiye", 4),
    ("Argentina", 4),
    ("United Kingdom", 4),
    ("Côte d'Ivoire", 1),
    ("Slovenia", 3),
)
_VERSIONS = ("6.11.2", "6.11.4", "6.12.0", "6.12.1", "6.13.0", "6.13.3", "6.14.0")
_SCREENS = (
    "MainScreen",
    "EventDetails",
    "TeamDetails",
    "PlayerDetails",
    "LeagueDetails",
    "Favorites",
    "Search",
    "Settings",
)
_TEAMS = (
    "Dinamo Zagreb",
    "Hajduk Split",
    "Rijeka",
    "Osijek",
    "Flamengo",
    "Palmeiras",
    "Crvena zvezda",
    "Partizan",
    "Legia Warszawa",
    "Inter",
    "Real Madrid",
    "FC Barcelona",
    "Bayern München",
    "Galatasaray",
)
_STATUSES = ("notstarted", "inprogress", "finished", "finished", "finished", "postponed")


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...], k: int) -> list[str]:
    names = [name for name, _ in table]
    weights = [w for _, w in table]
    return rng.choices(names, weights=weights, k=k)


def _row_tails(rng: random.Random, count: int) -> list[str]:
    """Render ``count`` rows minus date and timestamp, CSV-quoted, newline-terminated."""
    users = [f"{rng.getrandbits(128):032x}" for _ in range(max(64, count // 3))]
    events = _weighted(rng, _EVENTS, count)
    countries = _weighted(rng, _COUNTRIES, count)
    buf = io.StringIO()
    # Minimal quoting like the real export: only fields with commas/quotes get quoted.
    writer = csv.writer(buf, lineterminator="\n")
    for i in range(count):
        event = events[i]
        experiments = ""
        if rng.random() < 0.3:
            picked = sorted(rng.sample(range(1, 40), rng.randint(1, 3)))
            experiments = (
                "{" + ", ".join(f'"firebase_exp_{n}": "{rng.randint(0, 2)}"' for n in picked) + "}"
            )
        item_id = item_name = first_open = screen = event_id = status = ""
        if event == "screen_view":
            screen = rng.choice(_SCREENS)
            if screen == "EventDetails":
                event_id = str(rng.randint(11_000_000, 12_999_999))
                status = rng.choice(_STATUSES)
            elif screen != "MainScreen":
                item_id = str(rng.randint(1_000, 999_999))
        elif event == "select_content":
            home, away = rng.sample(_TEAMS, 2)
            item_name = f"{home} - {away}"
            item_id = event_id = str(rng.randint(11_000_000, 12_999_999))
            status = rng.choice(_STATUSES)
        elif event == "first_open":
            first_open = str(rng.choice((0, 0, 0, 1, 2)))
        elif event.startswith("notification"):
            event_id = str(rng.randint(11_000_000, 12_999_999))
            status = rng.choice(_STATUSES)
        writer.writerow(
            (
                event,
                rng.choice(users),
                countries[i],
                rng.choice(_VERSIONS),
                "ANDROID" if rng.random() < 0.64 else "IOS",
                experiments,
                item_id,
                item_name,
                first_open,
                screen,
                event_id,
                status,
            )
        )
    return buf.getvalue().splitlines(keepends=True)


def _write_event_rows(
    out: IO[bytes], size_bytes: int, rng: random.Random, *, year: int, month: int
) -> int:
    """Write header and rows to ``out`` until the next row would pass ``size_bytes``.

    Always writes the header and at least one row. Returns the bytes written.
    """
    tails = _row_tails(rng, _POOL_SIZE)
    days = calendar.monthrange(year, month)[1]
    month_us = days * _DAY_US
    start_us = int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000
    dates = [f"{year:04d}{month:02d}{day:02d}" for day in range(1, days + 1)]
    avg_row = sum(len(t.encode()) for t in tails) / _POOL_SIZE + 26  # + date and timestamp
    header = (CSV_HEADER + "\n").encode()
    est_rows = max(1, int((size_bytes - len(header)) / avg_row))
    # Spread rows evenly over the month; jitter below one step keeps order mostly sorted.
    step = max(1, month_us // est_rows)
    jitter = [rng.randrange(step) for _ in range(_JITTER_SIZE)]
    mask, jmask = _POOL_SIZE - 1, _JITTER_SIZE - 1

    out.write(header)
    written = len(header)
    row = 0
    while True:
        # Cheap variation per chunk: a fresh rotation and odd stride over the pool.
        offset = rng.randrange(_POOL_SIZE)
        stride = rng.randrange(1, _POOL_SIZE, 2)
        n = min(_CHUNK_ROWS, max(64, int((size_bytes - written) / avg_row) + 64))
        parts = []
        for i in range(row, row + n):
            rel = ((i * month_us) // est_rows + jitter[i & jmask]) % month_us
            parts.append(
                f"{dates[rel // _DAY_US]},{start_us + rel},{tails[(offset + i * stride) & mask]}"
            )
        chunk = "".join(parts).encode()
        row += n
        room = size_bytes - written
        if len(chunk) <= room:
            out.write(chunk)
            written += len(chunk)
            if len(chunk) == room:
                return written
            continue
        cut = chunk.rfind(b"\n", 0, max(room, 0)) + 1
        if cut == 0 and written == len(header):
            cut = chunk.index(b"\n") + 1  # too small a budget: still one data row
        out.write(chunk[:cut])
        return written + cut


def write_event_csv(
    path: Path, size_bytes: int, rng: random.Random, *, year: int = YEAR, month: int = 1
) -> int:
    """Write an event CSV of about ``size_bytes`` (never more, except header + one row).

    Rows fall in ``year``/``month``. Returns the bytes written.
    """
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")
    with open(path, "wb") as out:
        return _write_event_rows(out, size_bytes, rng, year=year, month=month)


# --- archives ----------------------------------------------------------------


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix; the default depends on the generating OS
    info.external_attr = 0o100644 << 16
    return info


def _write_zip(path: Path, members: list[tuple[str, Callable[[IO[bytes]], int]]]) -> int:
    """Write a zip whose members are streamed by the callables. Returns CSV bytes."""
    total = 0
    with zipfile.ZipFile(path, "w") as zf:
        for name, write in members:
            with zf.open(_zip_info(name), "w") as member:
                total += write(member)
    return total


def _write_tar_gz(path: Path, name: str, write: Callable[[IO[bytes]], int]) -> int:
    """Write a tar.gz with one member. Returns CSV bytes.

    tar needs the member size up front, so the CSV goes to a temporary file
    next to the archive first (disk, not memory: sizes can reach hundreds of MB).
    """
    tmp = path.with_name(f".{path.name}.{name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            total = write(raw)
        info = tarfile.TarInfo(name)
        info.size = total
        info.mtime = _TAR_MTIME
        info.mode = 0o644
        info.uid = info.gid = 1000
        info.uname = info.gname = "sofascore_academy"
        with (
            open(path, "wb") as out,
            # filename="" and mtime=0 keep the gzip header free of run-dependent fields.
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
            open(tmp, "rb") as src,
        ):
            tar.addfile(info, src)
    finally:
        tmp.unlink(missing_ok=True)
    return total


# --- the tree ------------------------------------------------------------------

# Share of size_bytes per CSV (sums to 1). March gets several files on purpose.
_SHARES = {
    "january-small.csv": 0.30,
    "february-small.csv": 0.30,
    "march-small-01.csv": 0.10,
    "march-small-02.csv": 0.09,
    "march-small-03.csv": 0.08,
    "march small 2.csv": 0.05,
    "march-small-05.csv": 0.08,
}

_README = """\
Sample event-analytics export for dataferry demos (generated, not real users).

Only *.csv and *.zip files in this folder are data; this file must be skipped.
"""
_NOTES = """\
# Notes

- march-small-05.zip holds march-small-05.csv
- "march small 2.csv" has spaces in its name on purpose
"""


def _local(root: Path, remote: str) -> Path:
    return root.joinpath(*PurePosixPath(remote).relative_to("/").parts)


def generate_sample_dataset(
    root: Path, *, size_bytes: int = 4_000_000, seed: int = 0
) -> SampleDataset:
    """Write the sample tree under ``root`` (which plays the server's ``/``).

    Existing files at the same paths are replaced; nothing else under root
    is touched.
    """
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")

    def writer(name: str, month: int) -> Callable[[IO[bytes]], int]:
        # One RNG per file, seeded by name: a file's bytes do not depend on the others.
        rng = random.Random(f"dataferry-sample:{seed}:{name}")
        budget = int(size_bytes * _SHARES[name])
        return lambda out: _write_event_rows(out, budget, rng, year=YEAR, month=month)

    march_dir = _local(root, MARCH_REMOTE_DIR)
    march_dir.mkdir(parents=True, exist_ok=True)
    files: list[SampleFile] = []

    def record(remote: str, kind: Kind, csv_bytes: int, members: tuple[str, ...] = ()) -> None:
        local = _local(root, remote)
        files.append(SampleFile(remote, local, kind, local.stat().st_size, csv_bytes, members))

    jan = _local(root, JANUARY_REMOTE)
    record(
        JANUARY_REMOTE,
        "zip",
        _write_zip(jan, [("january-small.csv", writer("january-small.csv", 1))]),
        ("january-small.csv",),
    )
    feb = _local(root, FEBRUARY_REMOTE)
    record(
        FEBRUARY_REMOTE,
        "tar.gz",
        _write_tar_gz(feb, "february-small.csv", writer("february-small.csv", 2)),
        ("february-small.csv",),
    )
    for name in (
        "march-small-01.csv",
        "march-small-02.csv",
        "march-small-03.csv",
        "march small 2.csv",
    ):
        with open(march_dir / name, "wb") as out:
            n = writer(name, 3)(out)
        record(f"{MARCH_REMOTE_DIR}/{name}", "csv", n)
    n = _write_zip(
        march_dir / "march-small-05.zip", [("march-small-05.csv", writer("march-small-05.csv", 3))]
    )
    record(f"{MARCH_REMOTE_DIR}/march-small-05.zip", "zip", n, ("march-small-05.csv",))
    for name, text in (("README.txt", _README), ("notes.md", _NOTES)):
        (march_dir / name).write_bytes(text.encode())
        record(f"{MARCH_REMOTE_DIR}/{name}", "other", 0)

    # Fixed file times too, so a tree listing (and any mtime-based logic) is stable.
    for f in files:
        os.utime(f.local_path, (_TAR_MTIME, _TAR_MTIME))
    return SampleDataset(root=root, files=tuple(files), size_bytes=size_bytes, seed=seed)
