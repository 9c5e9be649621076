"""The project manifest (dataferry.manifest): model, JSON format, locked store, verify.

* format: hypothesis round trip (text -> manifest -> the same text), the exact
  bytes of a fixed example, strict validation (each bad value gives one
  ConfigError line naming the file and the field);
* model: lookups (entry, owner_of) and entry-level merging;
* store: entry-level merging across real processes (2 x 100 updates of one
  task), crash safety (kill -9 mid-loop leaves a loadable prefix), no stray
  files, lock timeout, unwritable destinations -> DestinationError;
* verify: intact, missing, truncated, same size but other content, touched;
* the exit codes of DriftError and FrozenError.

Real files, real processes, no mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dataferry
from dataferry._exceptions import (
    EXIT_CODES,
    ConfigError,
    DataferryError,
    DestinationError,
    DriftError,
    FrozenError,
)
from dataferry.manifest import (
    Drift,
    Entry,
    Manifest,
    ManifestStore,
    ResultRecord,
    SourceRecord,
    TaskRecord,
    dumps,
    loads,
    record_result,
    sha256_file,
    verify_task,
)

SRC = str(Path(dataferry.__file__).resolve().parent.parent)
H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()


def result(path: str, data: bytes = b"one", mtime: int = 1_700_000_000) -> ResultRecord:
    return ResultRecord(path, len(data), mtime, hashlib.sha256(data).hexdigest())


def entry(remote: str, *results: ResultRecord, **options: Any) -> Entry:
    return Entry(SourceRecord(remote, 100, 1_700_000_000), tuple(results), **options)


def task(destination: str, *entries: Entry) -> TaskRecord:
    return TaskRecord(destination, {item.source.path: item for item in entries})


# -- format: exact text ------------------------------------------------------------------------

EXAMPLE = Manifest(
    {
        "task_2": task(
            "/srv/out",
            Entry(
                SourceRecord("/data/b.csv", 3, 1700000001, H2),
                (ResultRecord("b.csv", 3, 1700000001, H2),),
            ),
        ),
        "task_1": task(
            "./data",
            Entry(
                SourceRecord("/data/a.zip", 200, 1700000000),
                (
                    ResultRecord("a/y.txt", 3, 1700000000, H2),
                    ResultRecord("a/x.txt", 3, 1700000000, H1),
                ),
                archive="a.zip",
                kept_archive=True,
                complete=False,
            ),
        ),
    }
)

EXAMPLE_TEXT = """\
{
  "dataferry_manifest": 1,
  "tasks": {
    "task_1": {
      "destination": "./data",
      "files": [
        {
          "source": {
            "path": "/data/a.zip",
            "size": 200,
            "mtime": 1700000000
          },
          "archive": "a.zip",
          "kept_archive": true,
          "complete": false,
          "results": [
            {
              "path": "a/x.txt",
              "size": 3,
              "mtime": 1700000000,
              "sha256": "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
            },
            {
              "path": "a/y.txt",
              "size": 3,
              "mtime": 1700000000,
              "sha256": "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"
            }
          ]
        }
      ]
    },
    "task_2": {
      "destination": "/srv/out",
      "files": [
        {
          "source": {
            "path": "/data/b.csv",
            "size": 3,
            "mtime": 1700000001,
            "sha256": "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"
          },
          "results": [
            {
              "path": "b.csv",
              "size": 3,
              "mtime": 1700000001,
              "sha256": "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"
            }
          ]
        }
      ]
    }
  }
}
"""


def test_fixed_example_has_exact_stable_text() -> None:
    assert dumps(EXAMPLE) == EXAMPLE_TEXT
    assert loads(EXAMPLE_TEXT) == EXAMPLE


def test_order_and_explicit_defaults_in_input_do_not_change_the_output() -> None:
    document = json.loads(EXAMPLE_TEXT)
    tasks = document["tasks"]
    document["tasks"] = {"task_2": tasks["task_2"], "task_1": tasks["task_1"]}
    files = tasks["task_2"]["files"]
    files[0]["archive"] = None
    files[0]["kept_archive"] = False
    files[0]["complete"] = True
    files[0] = dict(reversed(list(files[0].items())))
    tasks["task_1"]["files"][0]["results"].reverse()
    shuffled = json.dumps(document, indent=4)
    assert loads(shuffled) == EXAMPLE
    assert dumps(loads(shuffled)) == EXAMPLE_TEXT


def test_invisible_characters_are_escaped_letters_are_not() -> None:
    name = "é/\u202e\u2028\udcff\U000e0001 \u00a0.csv"
    text = dumps(Manifest({"t": task("d", entry("/r", result(name)))}))
    assert '"path": "é/\\u202e\\u2028\\udcff\\udb40\\udc01 \\u00a0.csv"' in text
    assert text.isascii() is False and text.encode("utf-8")  # valid UTF-8, é kept
    assert loads(text).entry("t", "/r") == entry("/r", result(name))


# -- format: hypothesis round trip -------------------------------------------------------------

_letters = st.one_of(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/"),
    st.characters(categories=["Cs"]),  # undecodable bytes of a file name, via os.fsdecode
)
_component = st.text(_letters, min_size=1, max_size=6).filter(lambda part: part not in (".", ".."))
_relative = st.lists(_component, min_size=1, max_size=3).map("/".join)
_remote = _relative.map(lambda path: "/" + path)
_name = st.text(st.characters(exclude_categories=["Cc"]), min_size=1, max_size=10)
_digest = st.binary(max_size=8).map(lambda data: hashlib.sha256(data).hexdigest())
_mtime = st.integers(min_value=-(2**40), max_value=2**40)
_size = st.integers(min_value=0, max_value=2**64)
_results = st.builds(ResultRecord, _relative, _size, _mtime, _digest)
_sources = st.builds(SourceRecord, _remote, _size, _mtime, st.none() | _digest)


@st.composite
def _entries(draw: st.DrawFn) -> Entry:
    results = draw(st.lists(_results, max_size=3, unique_by=lambda item: item.path))
    archive = draw(st.none() | _relative)
    kept = archive is not None and draw(st.booleans())
    return Entry(draw(_sources), tuple(results), archive, kept, draw(st.booleans()))


@st.composite
def _tasks(draw: st.DrawFn) -> TaskRecord:
    entries = draw(st.lists(_entries(), max_size=4, unique_by=lambda item: item.source.path))
    seen: set[str] = set()
    unique = []
    for item in entries:  # one owner per result path
        results = tuple(r for r in item.results if r.path not in seen)
        seen.update(r.path for r in results)
        unique.append(Entry(item.source, results, item.archive, item.kept_archive, item.complete))
    return task(draw(_name), *unique)


_manifests = st.dictionaries(_name, _tasks(), max_size=3).map(Manifest)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_manifests)
def test_round_trip(manifest: Manifest) -> None:
    text = dumps(manifest)
    again = loads(text)
    assert again == manifest
    assert dumps(again) == text
    assert text.endswith("}\n") and not text.endswith("\n\n")
    text.encode("utf-8")  # no lone surrogate left unescaped
    assert all(ch in "\n" or ch >= " " for ch in text)


# -- format: strict validation -----------------------------------------------------------------


def _valid() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXAMPLE_TEXT)
    return document


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change to the example document: set (or, for ..., delete) the value at ``path``."""

    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        elif isinstance(node, list) and key == len(node):
            node.append(value)
        else:
            node[key] = value

    return change


F0 = "tasks/task_1/files/0"
R0 = f"{F0}/results/0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("dataferry_manifest", 2),
            "dataferry_manifest: format version 2 is not supported: "
            "this dataferry reads version 1 only; a newer dataferry wrote this file",
        ),
        (_set("dataferry_manifest", "1"), "this dataferry reads version 1 only"),
        (_set("dataferry_manifest", True), "this dataferry reads version 1 only"),
        (_set("dataferry_manifest", ...), "not a dataferry manifest"),
        (
            _set(f"{F0}/source/size", -1),
            "tasks.task_1.files[0].source.size: expected a non-negative integer, got -1",
        ),
        (
            _set(f"{R0}/size", -5),
            "tasks.task_1.files[0].results[0].size: expected a non-negative integer",
        ),
        (_set(f"{R0}/size", 1.5), "results[0].size: expected a non-negative integer, got 1.5"),
        (_set(f"{R0}/size", True), "results[0].size: expected a non-negative integer, got true"),
        (_set(f"{R0}/mtime", "1"), "results[0].mtime: expected an integer"),
        (
            _set(f"{R0}/path", "/etc/passwd"),
            "tasks.task_1.files[0].results[0].path: absolute path not allowed",
        ),
        (_set(f"{R0}/path", "a/../../x"), "results[0].path: '..' component not allowed"),
        (_set(f"{R0}/path", ".."), "results[0].path: '..' component not allowed"),
        (_set(f"{R0}/path", "a\x00b"), "results[0].path: control character U+0000"),
        (_set(f"{R0}/path", "a\x1b[31mb"), "results[0].path: control character U+001B"),
        (_set(f"{R0}/path", "a//b"), "results[0].path: not in canonical form"),
        (_set(f"{R0}/path", ""), "results[0].path: empty path"),
        (_set(f"{R0}/path", 7), "results[0].path: expected a string, got a number"),
        (_set(f"{F0}/archive", "../a.zip"), "files[0].archive: '..' component not allowed"),
        (_set(f"{F0}/source/path", ""), "files[0].source.path: empty path"),
        (_set(f"{R0}/sha256", H1.upper()), "results[0].sha256: expected 64 lowercase hex"),
        (_set(f"{F0}/source/sha256", "abc"), "source.sha256: expected 64 lowercase hex"),
        (_set(f"{R0}/sha256", ...), "tasks.task_1.files[0].results[0]: missing key 'sha256'"),
        (_set(f"{F0}/source", ...), "tasks.task_1.files[0]: missing key 'source'"),
        (_set("tasks/task_1/destination", ...), "tasks.task_1: missing key 'destination'"),
        (_set("tasks/task_1/destination", ""), "tasks.task_1.destination: must not be empty"),
        (_set(f"{R0}/owner", "x"), "results[0]: unknown key 'owner'"),
        (_set(f"{F0}/complete", "no"), "files[0].complete: expected true or false"),
        (_set(f"{F0}/archive", ...), "files[0].kept_archive: is true but 'archive' is not set"),
        (_set("tasks/task_1/files", {}), "tasks.task_1.files: expected a list, got an object"),
        (_set("tasks/bad\nname", {}), 'tasks["bad\\nname"]: bad task name: control character'),
        (
            _set("tasks/task_1/files/1", json.loads(EXAMPLE_TEXT)["tasks"]["task_1"]["files"][0]),
            'tasks.task_1.files[1].source.path: "/data/a.zip" is also files[0]',
        ),
        (
            _set(f"{F0}/results/1/path", "a/x.txt"),
            'files[0].results[1].path: "a/x.txt" is also results[0]',
        ),
    ],
)
def test_invalid_manifest_gives_one_line_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    document = _valid()
    change(document)
    with pytest.raises(ConfigError) as info:
        loads(json.dumps(document, ensure_ascii=False), name="dataferry.manifest.json")
    text = str(info.value)
    assert text.startswith("dataferry.manifest.json: "), text
    assert message in text, text
    assert "\n" not in text


def test_one_result_with_two_owners_is_refused() -> None:
    document = _valid()
    second = json.loads(json.dumps(document["tasks"]["task_1"]["files"][0]))
    second["source"]["path"] = "/data/other.zip"
    second["results"] = second["results"][1:]
    document["tasks"]["task_1"]["files"].append(second)
    with pytest.raises(ConfigError, match=r'files\[1\]\.results\[0\]\.path: "a/y\.txt" is also'):
        loads(json.dumps(document))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object at the top, got a list"),
        ('{"dataferry_manifest": 1, "tasks": {}, "tasks": {}}', 'duplicate key "tasks"'),
        ('{"dataferry_manifest": 1, "tasks": {}, "x": 1}', "unknown key 'x'"),
        ('{"dataferry_manifest": NaN, "tasks": {}}', "NaN is not a valid number"),
    ],
)
def test_malformed_text(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^m\.json: ") as info:
        loads(text, name="m.json")
    assert message in str(info.value)


# -- model -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: SourceRecord("", 1, 1),
        lambda: SourceRecord("/a", -1, 1),
        lambda: ResultRecord("/abs", 1, 1, H1),
        lambda: ResultRecord("a/../b", 1, 1, H1),
        lambda: ResultRecord("a", 1, 1, "nothex"),
        lambda: Entry(SourceRecord("/a", 1, 1), (), kept_archive=True),
        lambda: Entry(SourceRecord("/a", 1, 1), (result("x"), result("x", b"two"))),
        lambda: TaskRecord("d", {"/other": entry("/a")}),
        lambda: task("d", entry("/a", result("x")), entry("/b", result("x"))),
        lambda: Manifest({"": task("d")}),
    ],
)
def test_model_refuses_values_the_format_could_not_hold(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_lookups() -> None:
    zipped = entry("/r/a.zip", result("a/x"), archive="a.zip", kept_archive=True)
    removed = entry("/r/b.zip", result("b/x"), archive="b.zip")
    pending = entry("/r/c.zip", result("c/x"), archive="c.zip", complete=False)
    manifest = Manifest({"t": task("d", zipped, removed, pending)})
    assert manifest.entry("t", "/r/a.zip") is zipped
    assert manifest.entry("t", "/r/zzz") is None
    assert manifest.entry("other", "/r/a.zip") is None
    assert manifest.owner_of("t", "a/x") is zipped
    assert manifest.owner_of("t", "a.zip") is zipped  # kept archive
    assert manifest.owner_of("t", "b.zip") is None  # removed after extraction
    assert manifest.owner_of("t", "c.zip") is pending  # intent: may be on disk
    assert manifest.owner_of("t", "c/x") is pending
    assert manifest.owner_of("t", "nothing") is None
    assert manifest.owner_of("other", "a/x") is None


def test_merge_replaces_by_source_and_hands_over_results() -> None:
    old = task("d", entry("/r/a", result("x"), result("y")), entry("/r/b", result("z")))
    new = old.merged(upsert=[entry("/r/c", result("y", b"two"))], remove=["/r/b", "/r/none"])
    assert sorted(new.entries) == ["/r/a", "/r/c"]
    assert [r.path for r in new.entries["/r/a"].results] == ["x"]  # y now belongs to /r/c
    assert new.owner_of("y") == entry("/r/c", result("y", b"two"))


# -- store -------------------------------------------------------------------------------------


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_store_load_missing_is_empty_and_update_creates_folders(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "project" / "sub" / "dataferry.manifest.json")
    assert store.load() == Manifest()
    written = store.update("task_1", "./data", upsert=[entry("/r/a", result("a"))])
    expected = Manifest({"task_1": task("./data", entry("/r/a", result("a")))})
    assert store.load() == written == expected
    assert _files(store.path.parent) == ["dataferry.manifest.json", "dataferry.manifest.json.lock"]
    assert store.path.read_text() == dumps(written)


def test_store_merges_tasks_entries_and_removals(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json")
    store.update("task_1", "d1", upsert=[entry("/r/a", result("a")), entry("/r/b", result("b"))])
    store.update("task_2", "d2", upsert=[entry("/r/a", result("a"))])
    store.update("task_1", "d1", upsert=[entry("/r/c", result("c"))], remove=["/r/a"])
    manifest = store.load()
    assert sorted(manifest.tasks) == ["task_1", "task_2"]
    assert sorted(manifest.tasks["task_1"].entries) == ["/r/b", "/r/c"]
    assert sorted(manifest.tasks["task_2"].entries) == ["/r/a"]
    # A new destination: the old entries described another folder.
    store.update("task_2", "elsewhere", upsert=[entry("/r/z", result("z"))])
    assert store.load().tasks["task_2"] == task("elsewhere", entry("/r/z", result("z")))
    store.forget_task("task_2")
    assert sorted(store.load().tasks) == ["task_1"]


def test_store_keeps_mode_and_skips_identical_writes(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json")
    store.update("t", "d", upsert=[entry("/r/a", result("a"))])
    store.path.chmod(0o640)
    inode = store.path.stat().st_ino
    store.update("t", "d", upsert=[entry("/r/a", result("a"))])  # no change: no write
    assert store.path.stat().st_ino == inode
    store.update("t", "d", upsert=[entry("/r/b", result("b"))])
    assert store.path.stat().st_ino != inode
    assert store.path.stat().st_mode & 0o777 == 0o640


def test_store_invalid_manifest_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json")
    store.path.write_text('{"dataferry_manifest": 1, "tasks": {"t": 3}}')
    where = re.escape(f"{tmp_path}/m.json: tasks.t: expected an object, got a number")
    with pytest.raises(ConfigError, match=f"^{where}$"):
        store.load()
    with pytest.raises(ConfigError):
        store.update("t", "d", upsert=[entry("/r/a")])
    assert store.path.read_text() == '{"dataferry_manifest": 1, "tasks": {"t": 3}}'
    store.path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"m\.json: not UTF-8"):
        store.load()
    store.path.unlink()
    store.path.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read manifest .*m\.json: Is a directory"):
        store.load()


def test_store_removes_temporaries_of_killed_writers(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json")
    stale = tmp_path / ".m.json.0123456789abcdef.tmp"
    stale.write_text("half a docu")
    unrelated = tmp_path / ".m.json.notours.tmp"
    unrelated.write_text("x")
    store.update("t", "d")
    assert _files(tmp_path) == [".m.json.notours.tmp", "m.json", "m.json.lock"]


def test_store_lock_timeout_is_a_destination_error(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json", lock_timeout=0.2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock\n"
            "with FileLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(store.lock_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        held = r"still holds .*m\.json\.lock after 0\.2 s"
        with pytest.raises(DestinationError, match=held) as info:
            store.update("t", "d")
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert not store.path.exists()


def test_store_under_a_file_is_a_destination_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    store = ManifestStore(tmp_path / "plain" / "sub" / "m.json")
    problem = r"cannot create folder .*plain/sub .*: Not a directory$"
    with pytest.raises(DestinationError, match=problem):
        store.update("t", "d", upsert=[entry("/r/a")])
    assert isinstance(DestinationError("x"), DataferryError) and DestinationError.exit_code == 7


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a 0o500 folder anyway (see the test above)"
)
def test_store_in_read_only_folder_is_a_destination_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    store = ManifestStore(folder / "m.json")
    store.update("t", "d")  # lock file exists: the failure is the write itself
    folder.chmod(0o500)
    try:
        with pytest.raises(DestinationError, match=r"ro/m\.json.*Permission denied"):
            store.update("t", "d", upsert=[entry("/r/a")])
    finally:
        folder.chmod(0o700)
    assert _files(folder) == ["m.json", "m.json.lock"]


def _python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True, **popen
    )


def test_store_write_failure_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A full disk, for real: the file size limit (RLIMIT_FSIZE) makes write() fail."""
    store = ManifestStore(tmp_path / "m.json")
    store.update("t", "d", upsert=[entry("/r/a", result("a"))])
    before = store.path.read_text()
    code = """
        import resource, signal, sys
        from pathlib import Path
        from dataferry.manifest import Entry, ManifestStore, ResultRecord, SourceRecord
        from dataferry._exceptions import DestinationError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        digest = "0" * 64
        results = tuple(ResultRecord(f"r{i}", 1, 1, digest) for i in range(100))
        try:
            ManifestStore(Path(sys.argv[1])).update(
                "t", "d", upsert=[Entry(SourceRecord("/r/b", 1, 1), results)]
            )
        except DestinationError as exc:
            print(exc)
    """
    process = _python(code, str(store.path), stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert out.startswith(f"cannot write manifest {store.path}: File too large"), out
    assert out.count("\n") == 1
    assert store.path.read_text() == before
    assert _files(tmp_path) == ["m.json", "m.json.lock"]


WORKER = """
    import sys
    from pathlib import Path
    from dataferry.manifest import Entry, ManifestStore, ResultRecord, SourceRecord
    path, prefix, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = ManifestStore(Path(path))
    digest = "0" * 64
    number = start
    while stop < 0 or number < stop:
        results = tuple(
            ResultRecord(f"{prefix}/{number:06d}/{part}", number, number, digest)
            for part in range(4)
        )
        source = SourceRecord(f"/remote/{prefix}/{number:06d}", number, number)
        store.update("task_1", "./data", upsert=[Entry(source, results)])
        number += 1
"""


def test_two_processes_updating_one_task_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dataferry.manifest.json"
    workers = [_python(WORKER, str(path), prefix, "0", "100") for prefix in ("a", "b")]
    for worker in workers:
        assert worker.wait(timeout=240) == 0
    entries = ManifestStore(path).load().tasks["task_1"].entries
    expected = {f"/remote/{prefix}/{n:06d}" for prefix in ("a", "b") for n in range(100)}
    assert set(entries) == expected
    assert all(len(item.results) == 4 for item in entries.values())
    assert _files(tmp_path) == ["dataferry.manifest.json", "dataferry.manifest.json.lock"]


def test_kill_9_mid_update_leaves_old_or_new_document(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m.json")
    chance = random.Random(7)
    done = 0
    for _round in range(4):
        worker = _python(WORKER, str(store.path), "k", str(done), "-1")
        deadline = time.monotonic() + 120
        target = done + chance.randint(3, 15)
        try:
            while True:
                assert time.monotonic() < deadline, "the worker made no progress"
                assert worker.poll() is None, "the worker died on its own"
                if store.path.exists():
                    count = len(store.load().tasks["task_1"].entries)
                    if count >= target:
                        break
                time.sleep(chance.uniform(0, 0.01))
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        # Whatever moment the kill hit: a complete document holding updates 0..n-1.
        entries = store.load().tasks["task_1"].entries
        done = len(entries)
        assert done >= target
        assert set(entries) == {f"/remote/k/{n:06d}" for n in range(done)}
    # The dead writers' lock is free and any temporary file they left is cleaned up.
    ManifestStore(store.path, lock_timeout=5).update("task_2", "d")
    assert _files(tmp_path) == ["m.json", "m.json.lock"]


# -- verify ------------------------------------------------------------------------------------


def _fetched(folder: Path, files: dict[str, bytes]) -> TaskRecord:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    results = [record_result(folder, name) for name in files]
    return task("out", entry("/r/archive.zip", *results, archive="archive.zip"))


def test_verify_intact_missing_truncated_and_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = _fetched(
        out, {"intact": b"abc", "missing": b"abc", "empty": b"abc", "changed": b"abc"}
    )
    assert verify_task(record, tmp_path) == []
    (out / "missing").unlink()
    (out / "empty").write_bytes(b"")
    changed = out / "changed"
    stat = changed.stat()
    changed.write_bytes(b"abd")
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert verify_task(record, tmp_path) == [
        Drift(out / "changed", "content changed (sha256 differs)"),
        Drift(out / "empty", "size changed (recorded 3 bytes, found 0)"),
        Drift(out / "missing", "missing"),
    ]
    # Without rehash the same-size, same-mtime change goes unseen; the others do not.
    assert [drift.path.name for drift in verify_task(record, tmp_path, rehash=False)] == [
        "empty",
        "missing",
    ]


def test_verify_touch_is_drift_only_without_rehash(tmp_path: Path) -> None:
    record = _fetched(tmp_path / "out", {"a/b.csv": b"1,2\n"})
    os.utime(tmp_path / "out/a/b.csv", (1, 1))
    assert verify_task(record, tmp_path) == []
    (drift,) = verify_task(record, tmp_path, rehash=False)
    assert drift.path == tmp_path / "out/a/b.csv"
    assert drift.problem.startswith("modified (same size, but mtime 1 differs from recorded")


def test_verify_checks_only_complete_entries_and_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pending = entry("/r/p", result("p"), complete=False)
    kept = entry("/r/k.zip", archive="k.zip", kept_archive=True)
    record = task(str(out), pending, kept)  # absolute destination: base is not used
    assert verify_task(record, tmp_path / "elsewhere") == []
    (out / "d").mkdir()
    os.mkfifo(out / "fifo")
    record = task(str(out), entry("/r/d", result("d")), entry("/r/f", result("fifo")))
    assert [drift.problem for drift in verify_task(record, tmp_path)] == [
        "not a regular file",
        "not a regular file",
    ]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "none")


# -- exit codes --------------------------------------------------------------------------------


def test_new_exit_codes() -> None:
    assert DriftError.exit_code == 8 and issubclass(DriftError, DataferryError)
    assert FrozenError.exit_code == 9 and issubclass(FrozenError, DataferryError)
    assert EXIT_CODES[8] == "verify found missing or changed files"
    assert EXIT_CODES[9] == "--frozen: the remote or the local data differs from the manifest"
    assert list(EXIT_CODES) == sorted(EXIT_CODES)
