"""``--dry-run`` prints the plan and writes nothing; ``--json`` puts one event per
line on stdout (issue 12), against the real servers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.remote import Remote, run_args, run_cli
from tests.test_trees import TREE, local_tree, plant


def test_dry_run_prints_the_plan_and_writes_nothing(
    remote: Remote, tmp_path: Path, manifest_path: Path
) -> None:
    drop = remote.root / "drop"
    plant(drop, TREE)
    out = tmp_path / "out"
    args = [*run_args(out, remote.path(drop)), "--recursive", "--exclude", "*.tmp", "--dry-run"]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert not out.exists()
    assert not manifest_path.exists()
    lines = result.stdout.splitlines()
    assert lines[0].startswith("t: dry run, nothing written: 6 file(s) to fetch")
    assert f"  fetch {remote.path(drop / '2024/feb/deep/c.csv')} -> {out}/2024/feb/deep/c.csv" in (
        "\n".join(lines)
    )
    assert f"  skip  {remote.path(drop / '2024/jan/a.csv.tmp')}: excluded" in lines
    # A real run then fetches exactly that; a second dry run has nothing left to fetch.
    assert run_cli(args[:-1], remote.env(), tmp_path).returncode == 0
    assert len(local_tree(out)) == 6
    again = run_cli(args, remote.env(), tmp_path)
    assert again.stdout.startswith("t: dry run, nothing written: 0 file(s) to fetch")
    assert f"  skip  {remote.path(drop / 'top.csv')}: up to date" in again.stdout


def test_json_puts_one_event_per_line_on_stdout(remote: Remote, tmp_path: Path) -> None:
    drop = remote.root / "drop"
    plant(drop, {"a.csv": b"aaa", "b.csv": b"bb", "c.tmp": b"c", "name\nwith newline.csv": b"n"})
    out = tmp_path / "out"
    result = run_cli(
        [*run_args(out, remote.path(drop)), "--include", "*", "--exclude", "*.tmp", "--json"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(event["task"] == "t" for event in events)
    fetched = {Path(e["remote"]).name: e["bytes"] for e in events if e["event"] == "fetched"}
    assert fetched == {"a.csv": 3, "b.csv": 2}
    skipped = {Path(e["remote"]).name: e["reason"] for e in events if e["event"] == "skipped"}
    assert skipped == {"c.tmp": "excluded"}
    assert events[-1] == {**events[-1], "event": "summary", "files": 2, "bytes": 5}
    # Logs went to stderr, including the warning about the unsafe name.
    assert "cannot" not in result.stdout and "contains a control character" in result.stderr


def test_json_reports_a_failure_as_an_event(remote: Remote, tmp_path: Path) -> None:
    result = run_cli(
        [*run_args(tmp_path / "out", remote.path(remote.root / "missing")), "--json"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 4, result.stderr
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["event"] == "failed" and "not found" in event["error"]
    assert "dataferry: error:" in result.stderr
