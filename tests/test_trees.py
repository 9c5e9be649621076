"""Whole trees (issue 12) and big folders (issue 10), against the real servers:
listings stream in bounded memory, recursion keeps the tree's shape, filters
leave out what they should (and say so), links never lead out of the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.remote import REPO, Remote, run_args, run_cli, sshd_connection
from tests.support.sshd import OpenSSHServer

LINKS_PER_FILE = 60_000  # under ext4's 65,000 links per inode


def plant_empty_files(folder: Path, count: int) -> None:
    """count empty files, quickly: hard links to a few seeds."""
    folder.mkdir()
    for index in range(count):
        seed = folder.parent / f"seed-{index // LINKS_PER_FILE}"
        if index % LINKS_PER_FILE == 0:
            seed.write_bytes(b"")
        os.link(seed, folder / f"entry-{index:07d}.dat")


def test_a_200000_entry_folder_lists_in_bounded_memory(
    sshd_server: OpenSSHServer, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    plant_empty_files(folder, 200_000)
    remote = Remote("openssh", folder, sshd_connection(sshd_server, tmp_path / "kh"), None)
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.listing_peak", str(folder), "*.csv"],
        env={**remote.env(), "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["files"] == 0
    # Holding every entry took ~150 MB for 200,000 (759 MB for a million); streamed,
    # the listing adds next to nothing.
    added_mib = (measured["peak_kib"] - measured["before_kib"]) / 1024
    assert added_mib < 30, measured


def plant(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


TREE = {
    "top.csv": b"top",
    "notes.txt": b"notes",
    "2024/jan/a.csv": b"a",
    "2024/jan/a.csv.tmp": b"partial",
    "2024/feb/b.csv": b"bb",
    "2024/feb/deep/c.csv": b"ccc",
    "scratch/huge.csv": b"never listed",
    "2023/old.csv": b"old",
}


def local_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_three_level_tree_keeps_its_shape_with_include_and_exclude(
    remote: Remote, tmp_path: Path
) -> None:
    plant(remote.root / "drop", TREE)
    out = tmp_path / "out"
    args = [
        *run_args(out, remote.path(remote.root / "drop")),
        "--recursive",
        "--include",
        "*.csv",
        "--exclude",
        "scratch/**",
        "--exclude",
        "/2023/*.csv",
    ]
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {
        "top.csv": b"top",
        "2024/jan/a.csv": b"a",
        "2024/feb/b.csv": b"bb",
        "2024/feb/deep/c.csv": b"ccc",
    }
    # Counts of what was left out, and why, at INFO.
    assert "left out: 1 excluded, 2 matches no include pattern, 1 subfolder (folder excluded)" in (
        result.stderr
    )


def test_without_recursive_subfolders_are_counted_not_fetched(
    remote: Remote, tmp_path: Path
) -> None:
    plant(remote.root / "drop", TREE)
    out = tmp_path / "out"
    result = run_cli(
        [*run_args(out, remote.path(remote.root / "drop")), "--include", "*.csv"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {"top.csv": b"top"}
    assert "3 subfolders (recursive is off)" in result.stderr


def test_a_double_star_include_walks_the_tree(remote: Remote, tmp_path: Path) -> None:
    plant(remote.root / "drop", TREE)
    out = tmp_path / "out"
    result = run_cli(
        [*run_args(out, remote.path(remote.root / "drop")), "--include", "2024/**/*.csv"],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(local_tree(out)) == ["2024/feb/b.csv", "2024/feb/deep/c.csv", "2024/jan/a.csv"]


def test_sizes_and_ages_filter_files(remote: Remote, tmp_path: Path) -> None:
    drop = remote.root / "drop"
    plant(drop, {"small.csv": b"x", "right.csv": b"x" * 2000, "big.csv": b"x" * 9000})
    plant(drop, {"old.csv": b"y" * 2000})
    os.utime(drop / "old.csv", (1_600_000_000, 1_600_000_000))
    out = tmp_path / "out"
    result = run_cli(
        [
            *run_args(out, remote.path(drop)),
            "--min_size",
            "1K",
            "--max_size",
            "8K",
            "--newer_than",
            "2021-01-01",
        ],
        remote.env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(local_tree(out)) == ["right.csv"]
    assert "1 larger than max_size" in result.stderr
    assert "1 smaller than min_size" in result.stderr
    assert "1 older than newer_than or max_age" in result.stderr


def test_links_are_followed_only_to_files_inside_the_tree(
    sshd_server: OpenSSHServer, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    plant(drop, {"real.csv": b"real", "sub/inner.csv": b"inner"})
    plant(tmp_path / "outside", {"secret.csv": b"secret", "d/x.csv": b"x"})
    (drop / "link-in.csv").symlink_to(drop / "real.csv")
    (drop / "link-out.csv").symlink_to(tmp_path / "outside" / "secret.csv")
    (drop / "link-dir").symlink_to(tmp_path / "outside" / "d")
    (drop / "loop").symlink_to(drop)
    (drop / "broken.csv").symlink_to(drop / "gone.csv")
    remote = Remote("openssh", drop, sshd_connection(sshd_server, tmp_path / "kh"), None)
    out = tmp_path / "out"
    result = run_cli([*run_args(out, str(drop)), "--recursive"], remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {
        "link-in.csv": b"real",
        "real.csv": b"real",
        "sub/inner.csv": b"inner",
    }
    assert "a link leading outside the listed folder" in result.stderr
    assert "a broken link" in result.stderr


def test_hostile_folder_names_are_not_entered_and_shown_escaped(
    remote: Remote, tmp_path: Path
) -> None:
    drop = remote.root / "drop"
    plant(
        drop,
        {
            "ok/a.csv": b"a",
            "red\x1b[31m/b.csv": b"b",
            ".dataferry-staging-x/c.csv": b"c",  # one of dataferry's bookkeeping names
        },
    )
    out = tmp_path / "out"
    result = run_cli([*run_args(out, remote.path(drop)), "--recursive"], remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert local_tree(out) == {"ok/a.csv": b"a"}
    assert "\x1b" not in result.stderr + result.stdout
    assert "skipping folder 'red\\x1b[31m' from the server: contains a control character" in (
        result.stderr
    )
    assert "a name dataferry uses for its own files" in result.stderr
