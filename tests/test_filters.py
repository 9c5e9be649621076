"""Unit tests of the filter rules (plan/filters.py): pure logic, no server."""

from __future__ import annotations

import pytest

from dataferry.plan.filters import (
    EXCLUDED,
    FOLDER_EXCLUDED,
    IS_MARKER,
    NO_INCLUDE,
    NO_MARKER,
    RECURSIVE_OFF,
    TOO_BIG,
    TOO_OLD,
    TOO_SMALL,
    TOO_YOUNG,
    FilterRules,
    TreeFilter,
    glob_regex,
    needs_recursion,
    parse_duration,
    parse_marker,
    parse_size,
    parse_time_bound,
)
from dataferry.sources import Listing, RemoteFile


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "deep/er/a.csv", True),  # unanchored: matches the end of the path
        ("*.csv", "a.csv.tmp", False),
        ("/*.csv", "a.csv", True),
        ("/*.csv", "sub/a.csv", False),  # anchored at the top
        ("sub/*.csv", "sub/a.csv", True),
        ("sub/*.csv", "sub/x/a.csv", False),  # * stays within one folder
        ("sub/**.csv", "sub/x/a.csv", True),
        ("2024/**/*.csv", "2024/a.csv", True),  # **/ is zero or more folders
        ("2024/**/*.csv", "2024/jan/wk1/a.csv", True),
        ("data_?.csv", "data_1.csv", True),
        ("data_?.csv", "data_10.csv", False),
        ("data_[0-4].csv", "data_3.csv", True),
        ("data_[!0-4].csv", "data_7.csv", True),
        ("data_[!0-4].csv", "data_3.csv", False),
        ("*.{csv,tsv}", "x.tsv", True),
        ("*.{csv,tsv}", "x.json", False),
        ("a[.csv", "a[.csv", True),  # an unclosed bracket is literal, as in fnmatch
        (r"\*.csv", "*.csv", True),
        (r"\*.csv", "a.csv", False),
    ],
)
def test_glob_rules(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_include_with_a_path_or_double_star_needs_recursion() -> None:
    assert not needs_recursion(["*.csv", "/*.zip"])
    assert needs_recursion(["**/*.csv"])
    assert needs_recursion(["sub/*.csv"])


def test_excludes_win_and_folder_excludes_are_not_entered() -> None:
    tree = TreeFilter(
        FilterRules(include=("*.csv",), exclude=("*.tmp.csv", "scratch/**", "cache/"))
    )
    assert tree.recursive is False
    recursive = TreeFilter(
        FilterRules(include=("*.csv",), exclude=tree.rules.exclude, recursive=True)
    )
    assert tree.folder_skip_reason("2024") == RECURSIVE_OFF
    assert recursive.folder_skip_reason("2024") is None
    assert recursive.folder_skip_reason("scratch") == FOLDER_EXCLUDED
    assert recursive.folder_skip_reason("x/cache") == FOLDER_EXCLUDED
    assert recursive.folder_skip_reason("..") is not None  # untrusted names
    assert recursive.file_skip_reason("2024/a.csv", 1, 0) is None
    assert recursive.file_skip_reason("2024/a.tmp.csv", 1, 0) == EXCLUDED
    assert recursive.file_skip_reason("2024/a.txt", 1, 0) == NO_INCLUDE


def test_sizes_and_times() -> None:
    rules = FilterRules(
        include=("*",), min_size=10, max_size=100, newer_than=1000.0, not_after=5000.0
    )
    tree = TreeFilter(rules)
    assert tree.file_skip_reason("a", 9, 2000) == TOO_SMALL
    assert tree.file_skip_reason("a", 101, 2000) == TOO_BIG
    assert tree.file_skip_reason("a", 50, 999) == TOO_OLD
    assert tree.file_skip_reason("a", 50, 5001) == TOO_YOUNG
    assert tree.file_skip_reason("a", 10, 1000) is None


def test_ready_markers_release_their_files_wherever_they_are_listed() -> None:
    reported: list[tuple[str, str]] = []
    tree = TreeFilter(
        FilterRules(include=("*",), recursive=True, ready_marker="{name}.done"),
        lambda path, reason: reported.append((path, reason)),
    )
    kept = []
    for relative in ["a.csv", "b.csv", "b.csv.done", "sub/c.csv", "sub/c.csv.done"]:
        reason = tree.file_skip_reason(relative, 1, 0)
        if reason is None:
            kept.append(RemoteFile(f"/r/{relative}", 1, 0))
        else:
            assert reason == IS_MARKER
            tree.left_out(relative, reason)
    listing = tree.awaiting_markers(Listing("/r", True, tuple(kept)))
    assert [file.path for file in listing.files] == ["/r/b.csv", "/r/sub/c.csv"]
    assert ("a.csv", NO_MARKER) in reported
    assert tree.summary() == f"left out: 2 {IS_MARKER}, 1 {NO_MARKER}"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        ("250000", 250000),
        ("10M", 10_000_000),
        ("1.5k", 1500),
        ("2GiB", 2 * 2**30),
        ("10MB", 10_000_000),
        ("4kib", 4096),
    ],
)
def test_sizes_parse(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("90s", 90.0), ("15m", 900.0), ("1h30m", 5400.0), ("2d", 172800.0)],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "", "-5", True, "5 parsecs"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


def test_time_bounds() -> None:
    assert parse_time_bound("1970-01-02") == 86400.0
    assert parse_time_bound("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_time_bound("1d", now=100000.0) == 100000.0 - 86400
    with pytest.raises(ValueError, match="expected a date"):
        parse_time_bound("yesterday")


@pytest.mark.parametrize("bad", ["done", "{name}/done", "{name}", 3])
def test_bad_markers_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"containing \{name\}"):
        parse_marker(bad)
