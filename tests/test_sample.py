"""The generated sample dataset: deterministic, laid out like the real server, CSV-shaped."""

from __future__ import annotations

import csv
import io
import random
import tarfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dataferry.devserver.sample import (
    CSV_HEADER,
    FEBRUARY_REMOTE,
    JANUARY_REMOTE,
    MARCH_REMOTE_DIR,
    SampleDataset,
    generate_sample_dataset,
    write_event_csv,
)

SIZE = 1_500_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    return generate_sample_dataset(tmp_path_factory.mktemp("sample"), size_bytes=SIZE, seed=7)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _all_csv_payloads(ds: SampleDataset) -> dict[str, bytes]:
    """Every CSV the tasks would end up with, keyed by name, archives opened."""
    out: dict[str, bytes] = {}
    for f in ds.files:
        if f.kind == "csv":
            out[f.local_path.name] = f.local_path.read_bytes()
        elif f.kind == "zip":
            with zipfile.ZipFile(f.local_path) as zf:
                for name in zf.namelist():
                    out[name] = zf.read(name)
        elif f.kind == "tar.gz":
            with tarfile.open(f.local_path, "r:gz") as tf:
                for member in tf.getmembers():
                    extracted = tf.extractfile(member)
                    assert extracted is not None
                    out[member.name] = extracted.read()
    return out


def test_same_size_and_seed_give_identical_bytes(tmp_path: Path) -> None:
    first = generate_sample_dataset(tmp_path / "a")
    second = generate_sample_dataset(tmp_path / "b")
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert a == b
    assert first.total_bytes == second.total_bytes
    # A different seed changes the data but not the layout.
    generate_sample_dataset(tmp_path / "c", seed=1)
    c = _tree_bytes(tmp_path / "c")
    assert c.keys() == a.keys()
    assert c[JANUARY_REMOTE.lstrip("/")] != a[JANUARY_REMOTE.lstrip("/")]


def test_layout_matches_the_shipped_config(dataset: SampleDataset) -> None:
    remotes = set(dataset.remote_paths)
    assert JANUARY_REMOTE in remotes
    assert FEBRUARY_REMOTE in remotes
    for f in dataset.files:
        assert f.remote_path.startswith("/")
        assert f.local_path == dataset.root / f.remote_path.lstrip("/")
        assert f.local_path.is_file()
        assert f.size == f.local_path.stat().st_size

    with zipfile.ZipFile(dataset.file(JANUARY_REMOTE).local_path) as zf:
        assert zf.namelist() == ["january-small.csv"]
        assert zf.testzip() is None
    with tarfile.open(dataset.file(FEBRUARY_REMOTE).local_path, "r:gz") as tf:
        (member,) = tf.getmembers()
        assert member.name == "february-small.csv"
        assert member.isfile()

    march = dataset.root / MARCH_REMOTE_DIR.lstrip("/")
    names = {p.name for p in march.iterdir()}
    assert len([n for n in names if n.endswith(".csv")]) >= 3
    assert "march small 2.csv" in names
    assert {"README.txt", "notes.md"} <= names
    zips = [n for n in names if n.endswith(".zip")]
    assert zips
    for name in zips:
        with zipfile.ZipFile(march / name) as zf:
            assert zf.namelist()
            assert all(m.endswith(".csv") for m in zf.namelist())
    # Every file in the folder is listed, and only the skip files carry no CSV.
    assert {f.remote_path for f in dataset.files if f.remote_path.startswith(MARCH_REMOTE_DIR)} == {
        f"{MARCH_REMOTE_DIR}/{n}" for n in names
    }
    assert {f.local_path.name for f in dataset.files if f.csv_bytes == 0} == {
        "README.txt",
        "notes.md",
    }


def test_archives_are_pinned_to_fixed_metadata(dataset: SampleDataset) -> None:
    with zipfile.ZipFile(dataset.file(JANUARY_REMOTE).local_path) as zf:
        (info,) = zf.infolist()
        assert info.date_time == (2024, 4, 1, 0, 0, 0)
        assert info.compress_type == zipfile.ZIP_DEFLATED
    raw = dataset.file(FEBRUARY_REMOTE).local_path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert raw[3] & 0x08 == 0  # no file name stored in the gzip header
    with tarfile.open(dataset.file(FEBRUARY_REMOTE).local_path, "r:gz") as tf:
        (member,) = tf.getmembers()
        assert (member.uid, member.gid, member.mode) == (1000, 1000, 0o644)
        assert member.mtime == int(datetime(2024, 4, 1, tzinfo=UTC).timestamp())


def test_sizes_are_roughly_as_asked(dataset: SampleDataset) -> None:
    payloads = _all_csv_payloads(dataset)
    assert sum(len(v) for v in payloads.values()) == dataset.total_csv_bytes
    assert SIZE * 0.99 <= dataset.total_csv_bytes <= SIZE
    for f in dataset.files:
        if f.members:
            assert f.csv_bytes == sum(len(payloads[m]) for m in f.members)
    # CSV compresses, so archives are smaller on disk than their CSV.
    assert dataset.file(JANUARY_REMOTE).size < dataset.file(JANUARY_REMOTE).csv_bytes / 2


def test_csv_rows_look_like_event_analytics(dataset: SampleDataset) -> None:
    header = CSV_HEADER.split(",")
    assert len(header) == 14
    months = {"january-small.csv": 1, "february-small.csv": 2}
    for name, data in _all_csv_payloads(dataset).items():
        rows = _csv_rows(data)
        assert rows[0] == header, name
        assert len(rows) > 100
        month = months.get(name, 3)
        for row in rows[1:]:
            assert len(row) == 14, (name, row)
            record = dict(zip(header, row, strict=True))
            when = datetime.fromtimestamp(int(record["event_timestamp"]) / 1e6, UTC)
            assert (when.year, when.month) == (2024, month)
            assert record["event_date"] == when.strftime("%Y%m%d")
            assert record["platform"] in {"ANDROID", "IOS"}
            assert len(record["user_pseudo_id"]) == 32
            assert record["event_name"]
            assert record["geo_country"]
        events = {r[2] for r in rows[1:]}
        assert {"screen_view", "first_open", "app_remove"} <= events
        assert data.endswith(b"\n")


def test_write_event_csv_respects_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    written = write_event_csv(path, 50_000, random.Random(3), month=2)
    assert written == path.stat().st_size
    assert 49_000 <= written <= 50_000
    rows = _csv_rows(path.read_bytes())
    assert rows[0] == CSV_HEADER.split(",")
    assert all(r[0].startswith("202402") for r in rows[1:])
    # Too small a budget still yields a usable file: header and one row.
    tiny = tmp_path / "tiny.csv"
    write_event_csv(tiny, 10, random.Random(3))
    assert len(_csv_rows(tiny.read_bytes())) == 2
    with pytest.raises(ValueError):
        write_event_csv(tmp_path / "neg.csv", -1, random.Random(3))


def test_default_size_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    ds = generate_sample_dataset(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert 3_960_000 <= ds.total_csv_bytes <= 4_000_000
