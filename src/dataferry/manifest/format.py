"""The manifest file: stable, diff-friendly JSON that is safe to commit.

Example (``dumps`` writes exactly this layout)::

    {
      "dataferry_manifest": 1,
      "tasks": {
        "task_1": {
          "destination": "./data",
          "files": [
            {
              "source": {
                "path": "/srv/data/a.tar.gz",
                "size": 2048,
                "mtime": 1764806400
              },
              "archive": "a.tar.gz",
              "results": [
                {
                  "path": "a/x.csv",
                  "size": 10,
                  "mtime": 1764806400,
                  "sha256": "..."
                }
              ]
            }
          ]
        }
      }
    }

Tasks are sorted by name, files by source path, results by path; keys come in a
fixed order; optional fields holding their default (``sha256`` null,
``archive`` null, ``kept_archive`` false, ``complete`` true) are left out.
Indent is two spaces and the text ends with one newline.  Letters outside ASCII
are written as they are; control, format (e.g. bidi overrides), separator,
private-use, unassigned and surrogate characters are written as ``\\uXXXX``
escapes, so nothing invisible hides in a diff.

``loads`` is strict: unknown keys, duplicate keys, wrong types, unsafe paths
and an unknown format version raise :class:`~dataferry._exceptions.ConfigError`
with one line naming the file and the field, e.g.
``dataferry.manifest.json: tasks.task_1.files[3].size: expected a non-negative integer``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any, NoReturn

from .._exceptions import ConfigError
from .model import (
    Entry,
    Manifest,
    ResultRecord,
    SourceRecord,
    TaskRecord,
    name_problem,
    relative_path_problem,
    remote_path_problem,
    sha256_problem,
)

FORMAT_VERSION = 1
VERSION_KEY = "dataferry_manifest"
MANIFEST_NAME = "dataferry.manifest.json"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NON_ASCII = re.compile(r"[^\x00-\x7e]")


# -- writing -----------------------------------------------------------------------------------


def _source_document(source: SourceRecord) -> dict[str, object]:
    document: dict[str, object] = {"path": source.path, "size": source.size, "mtime": source.mtime}
    if source.sha256 is not None:
        document["sha256"] = source.sha256
    return document


def _entry_document(entry: Entry) -> dict[str, object]:
    document: dict[str, object] = {"source": _source_document(entry.source)}
    if entry.archive is not None:
        document["archive"] = entry.archive
    if entry.kept_archive:
        document["kept_archive"] = True
    if not entry.complete:
        document["complete"] = False
    document["results"] = [
        {"path": result.path, "size": result.size, "mtime": result.mtime, "sha256": result.sha256}
        for result in sorted(entry.results, key=lambda result: result.path)
    ]
    return document


def _visible(character: str) -> bool:
    category = unicodedata.category(character)
    return not (category[0] == "C" or category in ("Zl", "Zp", "Zs"))


def _escape(found: re.Match[str]) -> str:
    character = found.group()
    if _visible(character):
        return character
    code = ord(character)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def dumps(manifest: Manifest) -> str:
    """The manifest as text: same manifest, same bytes."""
    document = {
        VERSION_KEY: FORMAT_VERSION,
        "tasks": {
            name: {
                "destination": record.destination,
                "files": [_entry_document(record.entries[key]) for key in sorted(record.entries)],
            }
            for name, record in sorted(manifest.tasks.items())
        },
    }
    # json escapes U+0000-U+001F, '"' and '\\' inside strings; every other character
    # outside ASCII can only be inside a string, so escaping it afterwards is safe.
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _NON_ASCII.sub(_escape, text) + "\n"


# -- reading -----------------------------------------------------------------------------------


def _key(name: str) -> str:
    return f".{name}" if _IDENTIFIER.fullmatch(name) else f"[{json.dumps(name)}]"


class _Reader:
    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, where: str, problem: str) -> NoReturn:
        prefix = f"{self.name}: {where}" if where else self.name
        raise ConfigError(f"{prefix}: {problem}")

    def obj(
        self, value: object, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_kind(value)}")
        for key in required:
            if key not in value:
                self.fail(where, f"missing key {key!r}")
        for key in value:
            if key not in required and key not in optional:
                allowed = ", ".join(required + optional)
                self.fail(where, f"unknown key {key!r} (allowed: {allowed})")
        return value

    def string(self, value: object, where: str, check: Callable[[str], str | None]) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {_kind(value)}")
        problem = check(value)
        if problem:
            self.fail(where, f"{problem}: {json.dumps(value)}")
        return value

    def integer(self, value: object, where: str, *, non_negative: bool) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or (non_negative and value < 0):
            wanted = "a non-negative integer" if non_negative else "an integer"
            self.fail(where, f"expected {wanted}, got {json.dumps(value)}")
        return value

    def boolean(self, value: object, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {json.dumps(value)}")
        return value

    def source(self, value: object, where: str) -> SourceRecord:
        document = self.obj(value, where, ("path", "size", "mtime"), ("sha256",))
        digest_value = document.get("sha256")
        digest = (
            None
            if digest_value is None
            else self.string(digest_value, f"{where}.sha256", sha256_problem)
        )
        return SourceRecord(
            path=self.string(document["path"], f"{where}.path", remote_path_problem),
            size=self.integer(document["size"], f"{where}.size", non_negative=True),
            mtime=self.integer(document["mtime"], f"{where}.mtime", non_negative=False),
            sha256=digest,
        )

    def result(self, value: object, where: str) -> ResultRecord:
        document = self.obj(value, where, ("path", "size", "mtime", "sha256"))
        return ResultRecord(
            path=self.string(document["path"], f"{where}.path", relative_path_problem),
            size=self.integer(document["size"], f"{where}.size", non_negative=True),
            mtime=self.integer(document["mtime"], f"{where}.mtime", non_negative=False),
            sha256=self.string(document["sha256"], f"{where}.sha256", sha256_problem),
        )

    def entry(self, value: object, where: str) -> Entry:
        document = self.obj(
            value, where, ("source", "results"), ("archive", "kept_archive", "complete")
        )
        source = self.source(document["source"], f"{where}.source")
        results_value = document["results"]
        if not isinstance(results_value, list):
            self.fail(f"{where}.results", f"expected a list, got {_kind(results_value)}")
        results: list[ResultRecord] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(results_value):
            result = self.result(item, f"{where}.results[{index}]")
            if result.path in seen:
                self.fail(
                    f"{where}.results[{index}].path",
                    f"{json.dumps(result.path)} is also results[{seen[result.path]}]",
                )
            seen[result.path] = index
            results.append(result)
        archive_value = document.get("archive")
        archive = (
            None
            if archive_value is None
            else self.string(archive_value, f"{where}.archive", relative_path_problem)
        )
        kept = self.boolean(document.get("kept_archive", False), f"{where}.kept_archive")
        if kept and archive is None:
            self.fail(f"{where}.kept_archive", "is true but 'archive' is not set")
        complete = self.boolean(document.get("complete", True), f"{where}.complete")
        return Entry(source, tuple(results), archive, kept, complete)

    def task(self, value: object, where: str) -> TaskRecord:
        document = self.obj(value, where, ("destination", "files"))
        destination = self.string(document["destination"], f"{where}.destination", name_problem)
        files = document["files"]
        if not isinstance(files, list):
            self.fail(f"{where}.files", f"expected a list, got {_kind(files)}")
        entries: dict[str, Entry] = {}
        index_of_source: dict[str, int] = {}
        owner_of_result: dict[str, int] = {}
        for index, item in enumerate(files):
            at = f"{where}.files[{index}]"
            entry = self.entry(item, at)
            key = entry.source.path
            if key in index_of_source:
                self.fail(
                    f"{at}.source.path",
                    f"{json.dumps(key)} is also files[{index_of_source[key]}]",
                )
            index_of_source[key] = index
            for number, result in enumerate(entry.results):
                other = owner_of_result.setdefault(result.path, index)
                if other != index:
                    self.fail(
                        f"{at}.results[{number}].path",
                        f"{json.dumps(result.path)} is also a result of files[{other}]",
                    )
            entries[key] = entry
        return TaskRecord(destination, entries)

    def manifest(self, value: object) -> Manifest:
        if not isinstance(value, dict):
            self.fail("", f"expected a JSON object at the top, got {_kind(value)}")
        if VERSION_KEY not in value:
            self.fail("", f"not a dataferry manifest (no {VERSION_KEY!r} key)")
        version = value[VERSION_KEY]
        if type(version) is not int or version != FORMAT_VERSION:
            advice = ""
            if _newer(version):
                advice = "; a newer dataferry wrote this file, upgrade dataferry"
            self.fail(
                VERSION_KEY,
                f"format version {json.dumps(version)} is not supported: this dataferry reads "
                f"version {FORMAT_VERSION} only{advice}",
            )
        document = self.obj(value, "", (VERSION_KEY, "tasks"))
        tasks_value = document["tasks"]
        if not isinstance(tasks_value, dict):
            self.fail("tasks", f"expected an object, got {_kind(tasks_value)}")
        tasks: dict[str, TaskRecord] = {}
        for name, task in tasks_value.items():
            where = f"tasks{_key(name)}"
            problem = name_problem(name)
            if problem:
                self.fail(where, f"bad task name: {problem}")
            tasks[name] = self.task(task, where)
        return Manifest(tasks)


def _newer(version: object) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKeyError(f"duplicate key {json.dumps(key)} in one object")
        document[key] = value
    return document


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a valid number")


def loads(text: str, *, name: str = MANIFEST_NAME) -> Manifest:
    """Parse and check a manifest; ``name`` (the file) starts every error message."""
    reader = _Reader(name)
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKeyError as exc:
        reader.fail("", str(exc))
    except json.JSONDecodeError as exc:
        reader.fail("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except (ValueError, RecursionError) as exc:
        reader.fail("", f"not valid JSON: {exc}")
    try:
        return reader.manifest(document)
    except ValueError as exc:  # a rule of the model the reader did not check first
        reader.fail("", str(exc))
