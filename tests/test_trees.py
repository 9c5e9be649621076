"""Whole trees (issue 12) and big folders (issue 10), against the real servers:
listings stream in bounded memory, recursion keeps the tree's shape, filters
leave out what they should (and say so), links never lead out of the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.remote import REPO, Remote, sshd_connection
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
