"""Runs driven by the manifest, against the real sshd and the embedded server.

Re-runs that repair instead of refusing, `dataferry verify`, `--frozen`, clean
destinations and concurrent writers, and one test per defect of issue 9 part 3
(named after it).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dataferry import OverwriteConflictError, TaskSettings, run_task
from dataferry.manifest import ManifestStore
from tests.support.remote import REPO, Remote, run_args, run_cli


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def settings(remote: Remote, remote_file: Path, save: Path | str, **values: object) -> TaskSettings:
    return TaskSettings.model_validate(
        {
            "name": "t",
            "file_save_path": save,
            "remote_file_path": remote.path(remote_file),
            "retry_delay": 0,
            **values,
        }
    )


def run(task: TaskSettings, remote: Remote):  # type: ignore[no-untyped-def]
    return asyncio.run(run_task(task, remote.connection))


def listing(folder: Path) -> list[str]:
    """Everything under folder, hidden files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


MEMBERS = {"a.csv": b"a,b\n1,2\n" * 500, "b.csv": b"c,d\n3,4\n" * 700}


def test_trailing_slash_save_path_is_a_folder(remote: Remote, tmp_path: Path) -> None:
    """Defect: a file_save_path ending in / for a folder that does not exist yet
    saved the archive as a file of that name and extracted into the current folder."""
    make_zip(remote.root / "x.zip", MEMBERS)
    save = f"{tmp_path / 'new'}/"
    report = run(settings(remote, remote.root / "x.zip", save), remote)
    assert (tmp_path / "new").is_dir()
    assert listing(tmp_path / "new") == ["a.csv", "b.csv"]
    assert sorted(p.name for p in report.files) == ["a.csv", "b.csv"]


def test_deleted_result_is_repaired_without_overwrite(remote: Remote, tmp_path: Path) -> None:
    """Defect: one extracted file deleted, every later run stopped with exit 7 on
    dataferry's own outputs. Recorded outputs are dataferry's own: repaired."""
    make_zip(remote.root / "x.zip", MEMBERS)
    task = settings(remote, remote.root / "x.zip", tmp_path / "d" / "x.zip", overwrite=False)
    run(task, remote)
    (tmp_path / "d" / "a.csv").unlink()
    report = run(task, remote)
    assert (tmp_path / "d" / "a.csv").read_bytes() == MEMBERS["a.csv"]
    assert (tmp_path / "d" / "b.csv").read_bytes() == MEMBERS["b.csv"]
    assert report.up_to_date == []
    assert listing(tmp_path / "d") == ["a.csv", "b.csv"]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_disk_full_while_extracting_then_rerun_resumes(remote: Remote, tmp_path: Path) -> None:
    """Defect: a run that failed (disk full) while extracting made every later run
    stop with exit 7 on dataferry's own archive. Now the next run extracts the
    archive it already downloaded, without overwrite and without fetching it again."""
    rows = "".join(f"{i},{i * 7919 % 100003},{i % 97}\n" for i in range(30_000))
    big = {"big.csv": rows.encode(), "small.csv": b"x\n"}  # zipped: well under the limit
    make_zip(remote.root / "x.zip", big)
    save = tmp_path / "d" / "x.zip"
    args = run_args(save, remote.path(remote.root / "x.zip"), "--overwrite", "false")
    env = remote.env()
    failed = subprocess.run(
        [sys.executable, *args],
        env={**env, "PYTHONPATH": str(REPO / "src")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=120,
    )
    assert failed.returncode == 7, failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "d" / "big.csv").exists()  # all or nothing
    again = run_cli([*args, "--log-level", "INFO"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "was downloaded before; extracting it" in again.stderr
    assert (tmp_path / "d" / "big.csv").read_bytes() == big["big.csv"]
    assert listing(tmp_path / "d") == ["big.csv", "small.csv"]


def test_force_with_overwrite_false_replaces_own_outputs(remote: Remote, tmp_path: Path) -> None:
    """Defect: --force with overwrite false downloaded, then exited 7 on its own
    outputs and left the archive behind."""
    make_zip(remote.root / "x.zip", MEMBERS)
    task = settings(remote, remote.root / "x.zip", tmp_path / "d" / "x.zip", overwrite=False)
    run(task, remote)
    report = run(task.model_copy(update={"force": True}), remote)
    assert report.bytes_transferred > 0
    assert listing(tmp_path / "d") == ["a.csv", "b.csv"]  # the archive removed again


def test_truncated_result_is_not_up_to_date(remote: Remote, tmp_path: Path) -> None:
    """Defect: an extracted file truncated to 0 bytes was reported "up to date".
    Now it is a file changed since dataferry wrote it: protected with overwrite
    false (named in the error), repaired with overwrite true."""
    make_zip(remote.root / "x.zip", MEMBERS)
    task = settings(remote, remote.root / "x.zip", tmp_path / "d" / "x.zip", overwrite=False)
    run(task, remote)
    (tmp_path / "d" / "b.csv").write_bytes(b"")
    with pytest.raises(OverwriteConflictError, match=r"b\.csv.*changed since dataferry wrote it"):
        run(task, remote)
    assert (tmp_path / "d" / "b.csv").read_bytes() == b""  # left as the user has it
    report = run(task.model_copy(update={"overwrite": True}), remote)
    assert report.up_to_date == []
    assert (tmp_path / "d" / "b.csv").read_bytes() == MEMBERS["b.csv"]


def test_locks_live_outside_the_data(remote: Remote, tmp_path: Path) -> None:
    """Defect: a folder task locked in the destination's parent, and a refused run
    into an existing file left a lock file beside it. Locks live outside the data."""
    folder = remote.root / "f"
    folder.mkdir()
    (folder / "one.csv").write_bytes(b"1\n")
    tmp_path = tmp_path / "area"  # beside the fixture's own files
    parent = tmp_path / "parent"
    parent.mkdir(parents=True)
    run(settings(remote, folder, parent / "dest"), remote)
    assert listing(parent) == ["dest", "dest/one.csv"]
    existing = tmp_path / "passwd"
    existing.write_text("root:x:0:0\n")
    with pytest.raises(OverwriteConflictError):
        run(settings(remote, folder / "one.csv", existing, overwrite=False), remote)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parent", "passwd"]
    assert existing.read_text() == "root:x:0:0\n"


def test_two_processes_into_one_folder_lose_no_record(remote: Remote, tmp_path: Path) -> None:
    """Defect: two runs into one folder kept 200 of 201 entries; the lost one was
    downloaded again and exited 7. Two tasks run at once, 100 and 101 files."""
    for name, count in (("left", 100), ("right", 101)):
        folder = remote.root / name
        folder.mkdir()
        for index in range(count):
            (folder / f"{name}-{index:03d}.csv").write_bytes(f"{name},{index}\n".encode())
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "common": {"retry_delay": 0, "overwrite": False},
                "left": {
                    "file_save_path": "./shared",
                    "remote_file_path": remote.path(remote.root / "left"),
                },
                "right": {
                    "file_save_path": "./shared",
                    "remote_file_path": remote.path(remote.root / "right"),
                },
            }
        )
    )
    env = {**remote.env(), "PYTHONPATH": str(REPO / "src")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "dataferry", "run", name],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("left", "right")
    ]
    for process in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    manifest = ManifestStore(Path(os.environ["DATAFERRY_MANIFEST"])).load()
    recorded = sum(len(manifest.tasks[name].entries) for name in ("left", "right"))
    assert recorded == 201
    for name in ("left", "right"):
        again = run_cli(["-m", "dataferry", "run", name], remote.env(), tmp_path)
        assert again.returncode == 0, again.stderr
        assert "0 file(s) ready" in again.stdout or "already up to date" in again.stdout
    assert len(list((tmp_path / "shared").iterdir())) == 201


def test_clean_destination_and_verify(remote: Remote, tmp_path: Path) -> None:
    """After a successful run the destination holds only the results; `verify`
    exits 0 while they are intact and 8 (naming each) once one drifts."""
    make_zip(remote.root / "x.zip", MEMBERS)
    (remote.root / "plain.csv").write_bytes(b"p\n" * 100)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "common": {"retry_delay": 0},
                "zip": {
                    "file_save_path": "./z/x.zip",
                    "remote_file_path": remote.path(remote.root / "x.zip"),
                },
                "csv": {
                    "file_save_path": "./c/plain.csv",
                    "remote_file_path": remote.path(remote.root / "plain.csv"),
                },
            }
        )
    )
    env = remote.env()
    assert run_cli(["-m", "dataferry", "run", "--all"], env, tmp_path).returncode == 0
    assert listing(tmp_path / "z") == ["a.csv", "b.csv"]
    assert listing(tmp_path / "c") == ["plain.csv"]
    intact = run_cli(["-m", "dataferry", "verify", "--all"], env, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "zip: 2 file(s) intact" in intact.stdout and "csv: 1 file(s) intact" in intact.stdout
    (tmp_path / "z" / "a.csv").write_bytes(b"a,b\n9,9\n" * 500)  # same size, other bytes
    (tmp_path / "c" / "plain.csv").unlink()
    drifted = run_cli(["-m", "dataferry", "verify", "--all"], env, tmp_path)
    assert drifted.returncode == 8
    assert "a.csv: content changed" in drifted.stdout
    assert "plain.csv: missing" in drifted.stdout
    assert drifted.stderr.count("\n") == 1 and "Traceback" not in drifted.stderr


def test_frozen_refuses_a_changed_remote(remote: Remote, tmp_path: Path) -> None:
    """--frozen fetches exactly what the manifest pins, and refuses (exit 9, local
    data untouched) when the remote differs: a changed, a new or a missing file."""
    folder = remote.root / "f"
    folder.mkdir()
    for name in ("a.csv", "b.csv"):
        (folder / name).write_bytes(name.encode() * 100)
    args = run_args(tmp_path / "d", remote.path(folder))
    env = remote.env()
    no_pin = run_cli([*args, "--frozen"], env, tmp_path)
    assert no_pin.returncode == 9 and "has no record of this task" in no_pin.stderr
    assert not (tmp_path / "d").exists()
    assert run_cli(args, env, tmp_path).returncode == 0
    # Elsewhere (a CI machine): the same pins fetch the same bytes.
    (tmp_path / "d" / "a.csv").unlink()
    assert run_cli([*args, "--frozen"], env, tmp_path).returncode == 0
    assert (tmp_path / "d" / "a.csv").read_bytes() == b"a.csv" * 100
    before = listing(tmp_path / "d")
    (folder / "b.csv").write_bytes(b"changed" * 100)
    changed = run_cli([*args, "--frozen"], env, tmp_path)
    assert changed.returncode == 9, changed.stderr
    assert "b.csv changed" in changed.stderr and "nothing was written" in changed.stderr
    assert listing(tmp_path / "d") == before
    assert (tmp_path / "d" / "b.csv").read_bytes() == b"b.csv" * 100
    (folder / "b.csv").write_bytes(b"b.csv" * 100)
    os.utime(folder / "b.csv", (1_600_000_000, 1_600_000_000))
    (folder / "c.csv").write_bytes(b"new")
    new = run_cli([*args, "--frozen"], env, tmp_path)
    assert new.returncode == 9 and "c.csv is new" in new.stderr
