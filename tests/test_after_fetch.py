"""after_fetch (issue 12): the server's copy is deleted or moved only once the file
is safe here; a refused action keeps the fetched file and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.remote import Remote, run_args, run_cli
from tests.test_trees import local_tree, plant


def test_move_keeps_the_tree_shape_on_the_server(remote: Remote, tmp_path: Path) -> None:
    drop, done = remote.root / "drop", remote.root / "done"
    plant(drop, {"a.csv": b"a", "sub/b.csv": b"bb", "skip.txt": b"t"})
    out = tmp_path / "out"
    result = run_cli(
        [
            *run_args(out, remote.path(drop)),
            "--recursive",
            "--after_fetch",
            f"move:{remote.path(done)}",
        ],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {"a.csv": b"a", "sub/b.csv": b"bb"}
    if remote.kind == "embedded":  # read-only: refused, reported, nothing lost
        assert "after_fetch failed, the fetched file is kept" in result.stderr
        assert local_tree(drop) == {"a.csv": b"a", "sub/b.csv": b"bb", "skip.txt": b"t"}
        return
    assert local_tree(done) == {"a.csv": b"a", "sub/b.csv": b"bb"}
    assert local_tree(drop) == {"skip.txt": b"t"}


# The embedded server is read-only (the move test covers its refusal).
@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_delete_acts_only_on_files_safe_here(remote: Remote, tmp_path: Path) -> None:
    drop = remote.root / "drop"
    plant(drop, {"a.csv": b"a", "b.csv": b"b"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.csv").write_bytes(b"someone else's")  # a clash: the run stops before fetching
    args = [*run_args(out, remote.path(drop)), "--after_fetch", "delete"]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 7, result.stderr
    assert local_tree(drop) == {"a.csv": b"a", "b.csv": b"b"}  # nothing deleted
    (out / "b.csv").unlink()
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {"a.csv": b"a", "b.csv": b"b"}
    assert local_tree(drop) == {}


def test_a_bad_after_fetch_is_a_config_error(remote: Remote, tmp_path: Path) -> None:
    result = run_cli(
        [*run_args(tmp_path / "out", "/x"), "--after_fetch", "move:relative/dir"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "dataferry: error: --after_fetch: expected keep, delete or move:/remote/folder "
        '(an absolute path), got "move:relative/dir"'
    )
