"""The fast paths, byte for byte: through a 30 ms round-trip link, many files in
flight, archives extracted while they download (and when that has to stop).

No timings are asserted here: `make bench` measures speed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from dataferry import ArchiveError, OverwriteConflictError, run_task
from dataferry.engine.run import OVERLAP_MIN_BYTES
from dataferry.plan.names import is_bookkeeping
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import REPO, Remote, random_bytes, settings_for, through

sys.path.insert(0, str(REPO))
from bench.proxy import ProxyThread


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_bookkeeping(p.name)
    }


def big_members() -> dict[str, bytes]:
    # Incompressible, so the archive is big enough for the overlapped path.
    return {
        "data/part-1.bin": random_bytes(OVERLAP_MIN_BYTES + 123_457, 1),
        "data/part 2.csv": b"a,b\n" * 20_000,
        "top.bin": random_bytes(700_001, 2),
    }


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_far_link_file_folder_and_archives(remote: Remote, tmp_path: Path) -> None:
    big = remote.root / "big.bin"
    big.write_bytes(random_bytes(9 << 20, 3))
    folder = remote.root / "many"
    folder.mkdir()
    for index in range(120):
        (folder / f"f{index:03d}.csv").write_bytes(random_bytes(1000 + index * 37, index))
    members = big_members()
    targz = write_tar_gz(remote.root / "a.tar.gz", members)
    azip = write_zip(remote.root / "b.zip", members)
    with ProxyThread(remote.connection.port, delay_s=0.015) as proxy:
        far = through(remote.connection, proxy.port, tmp_path)
        asyncio.run(run_task(settings_for(remote.path(big), tmp_path / "big.bin"), far))
        asyncio.run(run_task(settings_for(remote.path(folder), tmp_path / "many"), far))
        for archive in (targz, azip):
            save = tmp_path / archive.stem / archive.name
            report = asyncio.run(run_task(settings_for(remote.path(archive), save), far))
            assert report.extracted_while_downloading == [save]  # the overlapped path ran
            assert tree(save.parent) == members
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()
    assert tree(tmp_path / "many") == tree(folder)


def test_reset_during_overlapped_extraction_resumes(remote: Remote, tmp_path: Path) -> None:
    members = {"x.bin": random_bytes(12 << 20, 4)}
    archive = write_tar_gz(remote.root / "r.tar.gz", members)
    plan = FaultPlan(resets=1, reset_after=(3 << 20, 5 << 20), seed=3)
    with FaultProxy(remote.connection.port, plan) as proxy:
        save = tmp_path / "out" / "r.tar.gz"
        asyncio.run(
            run_task(
                settings_for(remote.path(archive), save, max_tries=3),
                through(remote.connection, proxy.port, tmp_path),
            )
        )
    assert proxy.resets_done == 1
    assert tree(save.parent) == members
    assert not [p for p in save.parent.iterdir() if p.name.startswith(".dataferry-extract")]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_hostile_archive_refused_while_downloading(
    remote: Remote, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    members = {"ok.bin": random_bytes(OVERLAP_MIN_BYTES + 10, 5), "../escape.txt": b"no"}
    writer = write_zip if kind == "zip" else write_tar_gz
    archive = writer(remote.root / f"evil.{kind}", members)
    dest = tmp_path / "inner" / "dest"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("mine")
    caplog.set_level(logging.DEBUG, logger="dataferry.tee")
    with pytest.raises(ArchiveError, match=r"\.\./escape\.txt"):
        asyncio.run(
            run_task(settings_for(remote.path(archive), dest / archive.name), remote.connection)
        )
    assert any("while it downloads" in r.getMessage() for r in caplog.records)
    assert tree(dest) == {"keep.txt": b"mine", archive.name: archive.read_bytes()}
    assert not (tmp_path / "inner" / "escape.txt").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".dataferry-extract")]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_conflict_stops_the_download_early(
    remote: Remote, tmp_path: Path, kind: str
) -> None:
    # overwrite false and the archive's first member already exists here: the run
    # stops while the archive is still downloading (through a slow link), and
    # nothing in the destination changes.
    members = {"first.csv": b"new\n", "big.bin": random_bytes(40 << 20, 6)}
    writer = write_zip if kind == "zip" else write_tar_gz
    archive = writer(remote.root / f"c.{kind}", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "first.csv").write_text("mine\n")
    with FaultProxy(remote.connection.port, FaultPlan(rate=8 << 20)) as proxy:
        with pytest.raises(OverwriteConflictError, match=r"first\.csv"):
            asyncio.run(
                run_task(
                    settings_for(remote.path(archive), dest / archive.name, overwrite=False),
                    through(remote.connection, proxy.port, tmp_path),
                )
            )
        sent = proxy.bytes_to_client
    # Stopped well before the end. The embedded server runs in this test process
    # and shares its GIL with the client and the proxy, so it reacts later.
    share = 0.5 if remote.kind == "openssh" else 0.9
    assert sent < archive.stat().st_size * share
    assert tree(dest) == {"first.csv": b"mine\n"}
    assert not (dest / archive.name).exists()
