"""The terminal display: one overall line per task, log records above it, a clean end.

The end-to-end test runs the CLI on a pseudo-terminal and replays what it drew
through a terminal emulator (pyte), so it checks the screen a user is left
with, not the byte stream.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from dataferry.observe.display import TaskDisplay, _Drawing
from dataferry.observe.events import TaskState
from tests.support.faults import FaultPlan, FaultProxy
from tests.support.remote import Remote, env_through, random_bytes, run_args
from tests.support.terminal import final_screen, run_on_terminal

BAR = "━"
SMALL_FILES = 20
ZIPS = 3


def make_folder(root: Path) -> Path:
    folder = root / "set"
    folder.mkdir()
    (folder / "big.bin").write_bytes(random_bytes(6_000_000, 3))
    for n in range(SMALL_FILES):
        (folder / f"part-{n:02d}.csv").write_text(f"n,value\n{n},{n * n}\n")
    for n in range(ZIPS):
        with zipfile.ZipFile(folder / f"archive-{n}.zip", "w") as archive:
            archive.writestr(f"inner-{n}.csv", "a,b\n1,2\n")
    return folder


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_terminal_display_keeps_log_lines_whole_and_ends_clean(
    remote: Remote, tmp_path: Path
) -> None:
    folder = make_folder(remote.root)
    # 4 MB/s: the 6 MB file stays in flight over several redraws.
    with FaultProxy(remote.connection.port, FaultPlan(rate=4_000_000)) as proxy:
        env = env_through(remote.env(), remote.connection, proxy.port, tmp_path)
        argv = [
            sys.executable,
            *run_args("out/", remote.path(folder), "--include", "*", "--log-level", "INFO"),
        ]
        result = run_on_terminal(argv, env=env, cwd=tmp_path)
    raw = result.output.decode(errors="replace")
    screen = final_screen(result.output)
    shown = "\n".join(screen)
    assert result.returncode == 0, shown
    total = 1 + SMALL_FILES + ZIPS

    # While it ran: the overall line, and a line for the big file in flight.
    assert f"/{total} files" in raw
    assert "big.bin" in raw and "of 6.0 MB" in raw

    # Log records (one per archive extracted while the display lived) are whole
    # lines of their own, never glued to the display's lines.
    extracting = [line for line in screen if "extracting" in line]
    assert len(extracting) == ZIPS, shown
    assert all(line.startswith("INFO: extracting ") for line in extracting), shown
    assert not [line for line in screen if BAR in line and ("INFO" in line or "WARN" in line)]

    # The end: the display's final state once, then the summary; nothing in flight.
    bar_lines = [n for n, line in enumerate(screen) if BAR in line]
    assert len(bar_lines) == 1, shown
    final = screen[bar_lines[0]]
    assert final.startswith("t ") and f"done: {total} file(s)" in final, final
    assert max(n for n, line in enumerate(screen) if "extracting" in line) < bar_lines[0]
    summary = screen[bar_lines[0] + 1 :]
    # Each archive leaves one extracted file in its place: as many files as fetched.
    assert summary[0].startswith(f"t: {total} file(s) ready in out, 6.0 MB transferred"), shown
    assert "--list" in summary[1]  # more than 10 files: counts, not 2000 paths
    assert "big.bin" not in "\n".join(screen[bar_lines[0] :])
    assert (tmp_path / "out" / "big.bin").read_bytes() == (folder / "big.bin").read_bytes()


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_list_prints_every_path(remote: Remote, tmp_path: Path) -> None:
    from tests.support.remote import run_cli

    folder = make_folder(remote.root)
    args = run_args("out/", remote.path(folder), "--include", "*.csv", "--list")
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"t: {SMALL_FILES} file(s) ready in out")
    listed = sorted(Path(line.strip()).name for line in lines[1:])
    assert listed == sorted(f"part-{n:02d}.csv" for n in range(SMALL_FILES))
    # Without --list: the summary line only.
    again = run_cli([*args[:-1], "--force"], remote.env(), tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(again.stdout.splitlines()) == 2 and "--list" in again.stdout


def draw(display: TaskDisplay) -> str:
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(_Drawing(display.state, display.max_file_lines))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_counts_resumed_and_retried_files_once() -> None:
    display = TaskDisplay(io.StringIO())
    display.task_started("t")
    display.plan_ready("t", 2, 30_000_000)
    display.state_changed("t", TaskState.TRANSFERRING)
    display.file_started("t", "/a", 20_000_000, 5_000_000)  # resumes at 5 MB
    display.bytes_received("t", "/a", 3_000_000)
    display.file_started("t", "/a", 20_000_000, 8_000_000)  # a new try resumes at 8 MB
    display.file_started("t", "/b", 10_000_000, 0)
    display.bytes_received("t", "/b", 1_000_000)
    assert display.state.bytes_done == 9_000_000
    text = draw(display)
    assert "0/2 files, 9.0 MB of 30.0 MB" in text
    # The largest file in flight first.
    assert text.index("a ") < text.index("b ") and "8.0 MB of 20.0 MB" in text
    display.bytes_received("t", "/a", 12_000_000)
    display.file_finished("t", "/a", "/local/a", 20_000_000)
    display.bytes_received("t", "/b", 9_000_000)
    display.file_finished("t", "/b", "/local/b", 10_000_000)
    assert display.state.bytes_done == 30_000_000 and display.state.files_done == 2
    display.task_finished("t", 2, 25_000_000, 2.0)
    text = draw(display)
    assert "done: 2 file(s), 25.0 MB in 2.0 s" in text
    assert "20.0 MB" not in text  # no file lines once done


def test_at_most_a_few_file_lines() -> None:
    display = TaskDisplay(io.StringIO(), max_file_lines=3)
    display.plan_ready("t", 10, 10 * 5_000_000)
    for n in range(10):
        display.file_started("t", f"/f{n}", 5_000_000 + n, 0)
    text = draw(display)
    assert [n for n in range(10) if f"f{n} " in text] == [7, 8, 9]


@pytest.mark.parametrize("remote", ["openssh"], indirect=True)
def test_off_a_terminal_log_lines_and_no_drawing(remote: Remote, tmp_path: Path) -> None:
    from tests.support.remote import run_cli

    folder = make_folder(remote.root)
    args = run_args("out/", remote.path(folder), "--include", "*.csv", "--log-level", "INFO")
    result = run_cli(args, remote.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr and BAR not in result.stderr
    assert f"INFO: t: {SMALL_FILES} file(s), " in result.stderr  # LogProgress's plan line
    assert f"INFO: t: done, {SMALL_FILES} file(s)" in result.stderr
