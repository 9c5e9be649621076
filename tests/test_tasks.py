"""The three tasks end to end against real servers (OpenSSH sshd and the embedded one)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import resource
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dataferry import (
    ArchiveError,
    AuthenticationError,
    HostKeyError,
    OverwriteConflictError,
    RemotePathError,
    TaskObserver,
    TaskSettings,
    TransferError,
    run_task,
)
from dataferry._connection import ConnectionSettings, HostKeyPolicy, Secret
from dataferry.devserver.server import EmbeddedSFTPServer, _ReadOnlySFTPServer
from dataferry.engine.run import OVERLAP_MIN_BYTES
from dataferry.plan import PlannedFile, files_in_flight
from dataferry.plan.names import is_bookkeeping
from dataferry.plan.planning import (
    FAR_SMALL_FILES_IN_FLIGHT,
    FILES_IN_FLIGHT,
    SMALL_FILES_IN_FLIGHT,
)
from dataferry.sources import RemoteFile
from dataferry.sources.ssh.session import _host_label
from tests.support.remote import Remote, random_bytes, sshd_connection
from tests.support.sshd import OpenSSHServer


class Recorder(TaskObserver):
    def __init__(self) -> None:
        self.retries: list[str] = []
        self.finished: list[str] = []

    def retrying(self, task: str, attempt: int, max_tries: int, delay: float, error: str) -> None:
        self.retries.append(error)

    def file_finished(self, task: str, remote_path: str, local_path: str, size: int) -> None:
        self.finished.append(remote_path)


def csv_bytes(rows: int, seed: int = 0) -> bytes:
    lines = ["event_date,event_name,user_pseudo_id"]
    lines += [f"2024-01-{1 + i % 28:02d},screen_view,{seed}-{i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def task(remote: Remote, remote_file: Path | str, save: Path, **values: object) -> TaskSettings:
    remote_path = remote.path(remote_file) if isinstance(remote_file, Path) else remote_file
    return TaskSettings.model_validate(
        {
            "name": "t",
            "file_save_path": save,
            "remote_file_path": remote_path,
            "retry_delay": 0,
            **values,
        }
    )


def run(
    settings: TaskSettings, connection: ConnectionSettings, observer: TaskObserver | None = None
):  # type: ignore[no-untyped-def]
    return asyncio.run(run_task(settings, connection, observer))


def snapshot(root: Path) -> dict[str, bytes]:
    """The user's files under root (dataferry's hidden state and lock files left out)."""
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
    assert not [name for name in files if name.endswith(".dataferry-part")]
    return {name: p.read_bytes() for name, p in files.items() if not is_bookkeeping(p.name)}


def test_task_1_zip_is_fetched_extracted_and_removed(remote: Remote, tmp_path: Path) -> None:
    data = csv_bytes(5000)
    make_zip(remote.root / "january-small.csv.zip", {"january-small.csv": data})
    save = tmp_path / "data" / "task1" / "january-small.csv.zip"
    report = run(task(remote, remote.root / "january-small.csv.zip", save), remote.connection)
    assert (save.parent / "january-small.csv").read_bytes() == data
    assert not save.exists()  # keep_zip_tar_file defaults to false
    assert report.files == [save.parent / "january-small.csv"]
    assert snapshot(save.parent).keys() == {"january-small.csv"}  # no partial files left


def test_task_2_tar_gz_kept_when_asked(remote: Remote, tmp_path: Path) -> None:
    members = {"february-small/february-small.csv": csv_bytes(3000, 1)}
    source = make_tar(remote.root / "february-small.tar.gz", members)
    save = tmp_path / "task2" / "february-small.tar.gz"
    run(task(remote, source, save, keep_zip_tar_file="True"), remote.connection)
    assert save.read_bytes() == source.read_bytes()
    assert (save.parent / "february-small/february-small.csv").read_bytes() == members[
        "february-small/february-small.csv"
    ]


def test_archive_type_comes_from_content_not_name(remote: Remote, tmp_path: Path) -> None:
    # A bzip2 tar named .zip, and a zip named .tar.gz.
    tar = make_tar(remote.root / "odd.zip", {"inside-tar.csv": b"a,b\n"}, mode="w:bz2")
    fake = make_zip(remote.root / "odd.tar.gz", {"inside-zip.csv": b"c,d\n"})
    run(task(remote, tar, tmp_path / "one" / "odd.zip"), remote.connection)
    run(task(remote, fake, tmp_path / "two" / "odd.tar.gz"), remote.connection)
    assert (tmp_path / "one/inside-tar.csv").read_bytes() == b"a,b\n"
    assert (tmp_path / "two/inside-zip.csv").read_bytes() == b"c,d\n"


def test_task_3_folder_with_spaces_and_other_files(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "march-small"
    folder.mkdir()
    (folder / "march 1.csv").write_bytes(csv_bytes(100, 1))
    (folder / "march-2.csv").write_bytes(csv_bytes(100, 2))
    make_zip(folder / "march 3.zip", {"march 3.csv": csv_bytes(100, 3)})
    (folder / "README.txt").write_text("skip me")
    (folder / "nested").mkdir()
    (folder / "nested" / "deep.csv").write_text("not fetched: not directly in the folder")
    save = tmp_path / "task3"
    report = run(task(remote, folder, save), remote.connection)
    assert snapshot(save) == {
        "march 1.csv": csv_bytes(100, 1),
        "march-2.csv": csv_bytes(100, 2),
        "march 3.csv": csv_bytes(100, 3),
    }
    assert sorted(p.name for p in report.files) == ["march 1.csv", "march 3.csv", "march-2.csv"]


def test_task_3_include_patterns(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "mixed"
    folder.mkdir()
    for name in ("a.csv", "b.json", "c.txt"):
        (folder / name).write_text(name)
    run(task(remote, folder, tmp_path / "out", include=["*.json", "*.txt"]), remote.connection)
    assert snapshot(tmp_path / "out") == {"b.json": b"b.json", "c.txt": b"c.txt"}


def test_plain_file_into_existing_folder(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "notes.bin"
    source.write_bytes(bytes(range(256)) * 4000)
    (tmp_path / "dest").mkdir()
    run(task(remote, source, tmp_path / "dest"), remote.connection)
    assert (tmp_path / "dest" / "notes.bin").read_bytes() == source.read_bytes()


def test_missing_remote_path_fails_at_once(remote: Remote, tmp_path: Path) -> None:
    recorder = Recorder()
    settings = task(
        remote,
        str(remote.path(remote.root / "nope.zip")),
        tmp_path / "x.zip",
        max_tries=5,
        retry_delay=30,
    )
    with pytest.raises(RemotePathError, match=r"remote path not found: .*nope\.zip"):
        run(settings, remote.connection, recorder)
    assert recorder.retries == []
    assert not (tmp_path / "x.zip").exists()


def test_overwrite_false_refuses_before_transferring(remote: Remote, tmp_path: Path) -> None:
    folder = remote.root / "f"
    folder.mkdir()
    (folder / "a.csv").write_text("new a")
    (folder / "b.csv").write_text("new b")
    save = tmp_path / "save"
    save.mkdir()  # an existing folder alone is no conflict
    (save / "b.csv").write_text("old b")
    before = snapshot(save)
    with pytest.raises(OverwriteConflictError, match=r"1 file\(s\) already exist .*b\.csv"):
        run(task(remote, folder, save, overwrite=False), remote.connection)
    assert snapshot(save) == before
    assert sorted(p.name for p in save.iterdir()) == ["b.csv"]
    # Into an empty existing folder it works, and with overwrite true it replaces.
    run(task(remote, folder, save, overwrite=True), remote.connection)
    assert snapshot(save) == {"a.csv": b"new a", "b.csv": b"new b"}


def _with_known_hosts(
    connection: ConnectionSettings, path: Path, policy: HostKeyPolicy
) -> ConnectionSettings:
    return replace(connection, known_hosts=path, host_key_policy=policy)


def test_unknown_host_key_strict_refuses(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "a.csv"
    source.write_text("x")
    connection = _with_known_hosts(
        remote.connection, tmp_path / "empty_known_hosts", HostKeyPolicy.STRICT
    )
    recorder = Recorder()
    with pytest.raises(HostKeyError, match=r"is not known.*ssh-keyscan"):
        run(task(remote, source, tmp_path / "a.csv", max_tries=3), connection, recorder)
    assert recorder.retries == []
    assert not (tmp_path / "empty_known_hosts").exists()
    assert not (tmp_path / "a.csv").exists()


def test_accept_new_records_then_refuses_a_changed_key(remote: Remote, tmp_path: Path) -> None:
    source = remote.root / "a.csv"
    source.write_text("x")
    known_hosts = tmp_path / "ssh" / "known_hosts"
    connection = _with_known_hosts(remote.connection, known_hosts, HostKeyPolicy.ACCEPT_NEW)
    run(task(remote, source, tmp_path / "a.csv"), connection)
    recorded = known_hosts.read_text()
    assert recorded == remote.connection.known_hosts.read_text()  # the server's real key
    # Now the "server" presents another key: replace the recorded one with a stranger's.
    label = _host_label(connection.host, connection.port)
    import asyncssh

    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts.write_text(f"{label} {stranger}")
    for policy in (HostKeyPolicy.ACCEPT_NEW, HostKeyPolicy.STRICT):
        changed = _with_known_hosts(remote.connection, known_hosts, policy)
        with pytest.raises(HostKeyError, match="has CHANGED"):
            run(task(remote, source, tmp_path / "b.csv"), changed)
    assert known_hosts.read_text() == f"{label} {stranger}"
    assert not (tmp_path / "b.csv").exists()


def test_wrong_password_fails_fast_without_retrying(
    remote: Remote, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if remote.kind == "openssh":
        user, _ = request.getfixturevalue("password_user")
    else:
        user = remote.connection.username
    connection = replace(
        remote.connection, username=user, password=Secret("wrong-Secret-42"), key_file=None
    )
    recorder = Recorder()
    with pytest.raises(AuthenticationError) as caught:
        run(task(remote, "/x", tmp_path / "x", max_tries=4, retry_delay=30), connection, recorder)
    assert "authentication failed" in str(caught.value)
    assert "wrong-Secret-42" not in str(caught.value)
    assert recorder.retries == []


def test_password_login_to_sshd(
    password_user: tuple[str, str], sshd_server: OpenSSHServer, tmp_path: Path
) -> None:
    user, password = password_user
    home = Path("/home") / user
    (home / "hello.csv").write_text("a,b\n1,2\n")
    connection = replace(
        sshd_connection(sshd_server, tmp_path / "known_hosts"),
        username=user,
        password=Secret(password),
        key_file=None,
    )
    settings = TaskSettings(
        name="t", file_save_path=tmp_path / "hello.csv", remote_file_path=str(home / "hello.csv")
    )
    run(settings, connection)
    assert (tmp_path / "hello.csv").read_text() == "a,b\n1,2\n"


def test_refused_connection_is_retried_then_exit_5(remote: Remote, tmp_path: Path) -> None:
    from tests.support.sshd import free_port

    connection = replace(remote.connection, port=free_port())
    recorder = Recorder()
    with pytest.raises(TransferError, match="failed after 3 tries: cannot connect"):
        run(task(remote, "/x", tmp_path / "x", max_tries=3), connection, recorder)
    assert len(recorder.retries) == 2


def test_extraction_caps_come_from_the_config(remote: Remote, tmp_path: Path) -> None:
    data = hashlib.shake_256(b"caps").hexdigest(1_500_000).encode()  # 3 MB, ratio ~2
    make_zip(remote.root / "big.zip", {"data.csv": data})
    save = tmp_path / "caps" / "big.zip"
    with pytest.raises(ArchiveError, match=r"data\.csv.*exceeds the limit of 1000000 bytes"):
        run(
            task(remote, remote.root / "big.zip", save, max_extract_bytes=1_000_000),
            remote.connection,
        )
    assert not (save.parent / "data.csv").exists()
    run(task(remote, remote.root / "big.zip", save, overwrite=True), remote.connection)
    assert (save.parent / "data.csv").read_bytes() == data


# ------------------------------------------------------------------ round trips


def test_one_stat_and_one_open_per_file(
    embedded_server: EmbeddedSFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each round trip costs ~30 ms on a far link: a big file (probed for an
    archive, then downloaded) and a big zip (head, end and directory, then
    the download) each take one stat and one open."""
    opened: list[bytes] = []
    statted: list[bytes] = []
    original_open, original_stat = _ReadOnlySFTPServer.open, _ReadOnlySFTPServer.stat

    def counting_open(self: _ReadOnlySFTPServer, path: bytes, *args: object) -> object:
        opened.append(path)
        return original_open(self, path, *args)  # type: ignore[arg-type]

    def counting_stat(self: _ReadOnlySFTPServer, path: bytes) -> object:
        statted.append(path)
        return original_stat(self, path)

    monkeypatch.setattr(_ReadOnlySFTPServer, "open", counting_open)
    monkeypatch.setattr(_ReadOnlySFTPServer, "stat", counting_stat)
    root = embedded_server.root / tmp_path.name
    root.mkdir()
    connection = embedded_server.connection_settings(tmp_path / "known_hosts")
    remote = Remote("embedded", root, connection, embedded_server.root)
    size = OVERLAP_MIN_BYTES + 12345
    (root / "big.bin").write_bytes(random_bytes(size, seed=1))
    with zipfile.ZipFile(root / "big.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("inside.bin", random_bytes(size, seed=2))
    for name in ("big.bin", "big.zip"):
        opened.clear()
        statted.clear()
        run(task(remote, root / name, tmp_path / "out" / name), connection)
        assert (len(statted), len(opened)) == (1, 1), (name, statted, opened)
    assert (tmp_path / "out" / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert (tmp_path / "out" / "inside.bin").read_bytes() == random_bytes(size, seed=2)
    folder = root / "folder"
    folder.mkdir()
    for number in range(5):
        (folder / f"part-{number}.csv").write_text(f"{number}\n")
    opened.clear()
    statted.clear()
    run(task(remote, folder, tmp_path / "folder"), connection)
    assert (len(statted), len(opened)) == (1, 5), (statted, opened)
    assert sorted(p.name for p in (tmp_path / "folder").glob("*.csv")) == [
        f"part-{number}.csv" for number in range(5)
    ]


@dataclass
class _Link:
    """What files_in_flight reads from a session: the measured round trip, the server's limit."""

    round_trip: float
    max_open_handles: int = 0


def test_files_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    def planned(size: int, count: int = 300) -> list[PlannedFile]:
        remote = RemoteFile("/r/x", size, 0)
        return [PlannedFile(remote, "x")] * count

    def in_flight(link: _Link, size: int) -> int:
        return files_in_flight(link, planned(size))  # type: ignore[arg-type]

    near, far = _Link(0.0002), _Link(0.03)
    assert in_flight(near, 2 << 20) == in_flight(far, 2 << 20) == FILES_IN_FLIGHT
    assert in_flight(near, 64 << 10) == SMALL_FILES_IN_FLIGHT
    assert in_flight(far, 64 << 10) == FAR_SMALL_FILES_IN_FLIGHT
    assert in_flight(_Link(0.03, max_open_handles=100), 64 << 10) == 100
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    assert in_flight(far, 64 << 10) == SMALL_FILES_IN_FLIGHT  # a quarter of 256 descriptors


def test_host_name_tries_each_address(sshd_server: OpenSSHServer, tmp_path: Path) -> None:
    """A name, not an address: looked up, each address tried in turn (where
    localhost also means ::1, sshd does not listen there: 127.0.0.1 only)."""
    source = tmp_path / "hello.csv"
    source.write_text("a,b\n1,2\n")
    known = tmp_path / "known_hosts"
    known.write_text(f"[localhost]:{sshd_server.port} {sshd_server.host_public_key}\n")
    connection = replace(
        sshd_connection(sshd_server, tmp_path / "unused"), host="localhost", known_hosts=known
    )
    settings = TaskSettings(
        name="t", file_save_path=tmp_path / "out.csv", remote_file_path=str(source)
    )
    run(settings, connection)
    assert (tmp_path / "out.csv").read_text() == "a,b\n1,2\n"


def test_aes_gcm_is_negotiated_first(
    remote: Remote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cipher preference (hardware-accelerated AES-GCM first, then asyncssh's
    defaults) is what both servers agree on."""
    (remote.root / "c.csv").write_text("c\n")
    caplog.set_level(logging.DEBUG, logger="dataferry.ssh")
    run(task(remote, remote.root / "c.csv", tmp_path / "c.csv"), remote.connection)
    assert any("cipher aes128-gcm@openssh.com" in r.getMessage() for r in caplog.records)
