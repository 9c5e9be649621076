"""The whole command-line definition: ``dataferry`` and the seed's ``task_N.py`` scripts.

Override flags keep the seed's spelling (``--file_save_path``, ``--log-level``).
Their values stay strings here; the settings layer validates them exactly like
config.json values, so ``--overwrite False`` means false.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._defaults import DEFAULT_CONFIG_FILE, LOG_LEVELS
from .._exceptions import EXIT_CODES

# (flag, config key, metavar, help)
OVERRIDES: tuple[tuple[str, str, str, str], ...] = (
    (
        "--file_save_path",
        "file_save_path",
        "PATH",
        "where to save: a file path, or a folder when the remote path is a folder",
    ),
    (
        "--remote_file_path",
        "remote_file_path",
        "PATH",
        "file or folder on the server (a folder: every file matching 'include' is fetched)",
    ),
    (
        "--keep_zip_tar_file",
        "keep_zip_tar_file",
        "BOOL",
        "keep the downloaded archive after extracting it (true/false; default false)",
    ),
    (
        "--max_tries",
        "max_tries",
        "N",
        "tries for transient failures: refused, reset or timed-out connections (default 3)",
    ),
    (
        "--retry_delay",
        "retry_delay",
        "SECONDS",
        "first wait between tries; it doubles with jitter on each retry (default 2)",
    ),
    ("--log-level", "log-level", "LEVEL", f"one of {', '.join(LOG_LEVELS)} (default INFO)"),
    (
        "--overwrite",
        "overwrite",
        "BOOL",
        "replace existing files (true/false; default false: stop before transferring, exit 7)",
    ),
    (
        "--verify",
        "verify",
        "size|sha256",
        "check each file's size (default), or also its sha256 (runs sha256sum on the server)",
    ),
    (
        "--request_timeout",
        "request_timeout",
        "SECONDS",
        "a request the server leaves unanswered this long fails the try (default 60)",
    ),
    (
        "--manifest",
        "manifest",
        "PATH",
        "the manifest recording what was fetched (default: DATAFERRY_MANIFEST, else "
        "dataferry.manifest.json beside the config file)",
    ),
    (
        "--connections",
        "connections",
        "N",
        "SSH connections per task, 1 to 32: files of 64 MiB or more are fetched in N "
        "segments at once (default 1)",
    ),
    (
        "--metrics_port",
        "metrics_port",
        "PORT",
        "serve GET /healthz and /metrics (Prometheus) on this port while the task runs",
    ),
    (
        "--metrics_host",
        "metrics_host",
        "ADDRESS",
        "address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 for all, "
        "as in a container)",
    ),
    # Trees and drop folders (docs/trees.md).
    ("--min_size", "min_size", "SIZE", "skip files smaller than SIZE (10M, 500K, 10MiB)"),
    ("--max_size", "max_size", "SIZE", "skip files larger than SIZE"),
    (
        "--newer_than",
        "newer_than",
        "WHEN",
        "skip files modified before WHEN: a date (2026-11-30) or a duration ago (7d)",
    ),
    ("--max_age", "max_age", "DURATION", "skip files modified longer ago than DURATION (7d)"),
    (
        "--min_age",
        "min_age",
        "DURATION",
        "skip files modified within DURATION (they may still be written; 5m)",
    ),
    (
        "--stable_for",
        "stable_for",
        "DURATION",
        "fetch a file only if its size and mtime stay the same across two listings DURATION apart",
    ),
    (
        "--ready_marker",
        "ready_marker",
        "TEMPLATE",
        "fetch X only once the marker file TEMPLATE exists beside it ('{name}.done')",
    ),
    (
        "--after_fetch",
        "after_fetch",
        "keep|delete|move:/DIR",
        "once a file is safe here, leave it on the server (default), delete it, or move it "
        "into /DIR there",
    ),
)

EPILOG = (
    "exit codes:\n"
    + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    + (
        "\n\nconnection settings come from the environment or ./.env: REMOTE_HOST_ADDRESS, "
        "REMOTE_PORT,\nUSERNAME, PASSWORD, SSH_KEY_FILE, SSH_KNOWN_HOSTS, SSH_HOST_KEY_POLICY "
        "(strict | accept-new),\nSSH_KEY_PASSPHRASE, SSH_CONFIG_FILE, SSH_PROXY_JUMP "
        "(docs/connecting.md)."
    )
)


def _add_overrides(
    parser: argparse.ArgumentParser,
    skip: tuple[str, ...] = (),
    title: str = "task settings (override config.json; precedence: flag > task section > common)",
) -> None:
    group = parser.add_argument_group(title)
    for flag, key, metavar, help_text in OVERRIDES:
        if key in skip:
            continue
        aliases = [flag]
        if flag == "--log-level":
            aliases.append("--log_level")
        group.add_argument(*aliases, dest=_dest(key), metavar=metavar, help=help_text, default=None)
    group.add_argument(
        "--force",
        dest=_dest("force"),
        action="store_const",
        const="true",
        default=None,
        help="fetch again files the destination already holds unchanged (skipped by default)",
    )
    group.add_argument(
        "--frozen",
        dest=_dest("frozen"),
        action="store_const",
        const="true",
        default=None,
        help="refuse to run (exit 9, nothing written) when the remote differs from what the "
        "manifest pins",
    )
    group.add_argument(
        "--include",
        dest="include",
        metavar="GLOB",
        action="append",
        default=None,
        help="for a remote folder: fetch files matching GLOB (repeatable; default *.csv and *.zip)",
    )
    group.add_argument(
        "--exclude",
        dest="exclude",
        metavar="GLOB",
        action="append",
        default=None,
        help="leave out files matching GLOB; a GLOB ending in /** leaves out a folder unlisted "
        "(repeatable)",
    )
    group.add_argument(
        "--recursive",
        dest=_dest("recursive"),
        action="store_const",
        const="true",
        default=None,
        help="walk the remote folder's subfolders too, keeping the tree's shape",
    )


def _dest(key: str) -> str:
    return "override_" + key.replace("-", "_")


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """The override flags the user gave, keyed by their config.json spelling."""
    values: dict[str, object] = {}
    for key in [key for _, key, _, _ in OVERRIDES] + ["force", "frozen", "recursive"]:
        value = getattr(args, _dest(key), None)
        if value is not None:
            values[key] = value
    if getattr(args, "include", None):
        values["include"] = list(args.include)
    if getattr(args, "exclude", None):
        values["exclude"] = list(args.exclude)
    return values


def _add_modes(parser: argparse.ArgumentParser) -> None:
    """How a run reports and whether it acts (not task settings)."""
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="list and print the plan (each file to fetch, to skip and why, total bytes); "
        "write nothing",
    )
    parser.add_argument(
        "--json",
        dest="json",
        action="store_true",
        help="one JSON object per line on stdout for each event (fetched, skipped, failed, "
        "summary); logs stay on stderr",
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataferry",
        description="Pull datasets from an SSH server over SFTP: verified host keys, "
        "resumable atomic downloads, safe extraction of zip and tar archives.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a task from config.json",
        formatter_class=_Formatter,
        epilog=EPILOG,
        description="Fetch (and extract) the dataset a task in config.json describes.",
    )
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("task", nargs="?", help="task name, a section of config.json (task_1)")
    target.add_argument("--all", action="store_true", help="run every task in the config file")
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"config file (default ./{DEFAULT_CONFIG_FILE}, optional when flags give both paths)",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run on the Dask cluster of this scheduler (tcp://HOST:8786; default "
        "DASK_SCHEDULER_ADDRESS), sharded by bytes; needs pip install 'dataferry[dask]'",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        default=None,
        help="run on a local Dask cluster of N worker processes (docs/scale.md)",
    )
    _add_overrides(run)
    _add_list_flag(run)
    _add_modes(run)

    _add_get(commands)

    watch = commands.add_parser(
        "watch",
        help="poll a task's remote folder and fetch what is new or changed, until stopped",
        formatter_class=_Formatter,
        epilog=EPILOG,
        description="Run a task every --every seconds on one kept connection (made again, "
        "with backoff, when it drops). Serves /healthz and /metrics the whole time with "
        "--metrics_port. SIGTERM or Ctrl-C stops it (a file in flight stays resumable), "
        "exit 0. See docs/trees.md.",
    )
    watch.add_argument("task", help="task name, a section of config.json")
    watch.add_argument(
        "--every",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds between the end of one poll and the start of the next (default 60)",
    )
    watch.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"config file (default ./{DEFAULT_CONFIG_FILE})",
    )
    _add_overrides(watch)
    watch.add_argument(
        "--json",
        dest="json",
        action="store_true",
        help="one JSON object per line on stdout for each event; logs stay on stderr",
    )

    verify = commands.add_parser(
        "verify",
        help="re-hash what the manifest records and list missing or changed files",
        formatter_class=_Formatter,
        epilog=EPILOG,
        description="Check each result file the manifest records for a task (size, mtime and "
        "sha256) against the disk. Exit 0 when all is intact, 8 when anything is missing or "
        "changed (each listed). Needs no connection.",
    )
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("task", nargs="?", help="task name as recorded in the manifest")
    which.add_argument("--all", action="store_true", help="every task the manifest records")
    verify.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"config file, to find the manifest beside it (default ./{DEFAULT_CONFIG_FILE})",
    )
    verify.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="PATH",
        help="the manifest (default: DATAFERRY_MANIFEST, else beside the config file)",
    )
    verify.add_argument(
        "--quick",
        action="store_true",
        help="compare sizes and modification times only, without re-hashing",
    )
    demo = commands.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="serve generated sample data from an embedded SFTP server and run every task",
        description="Start an SFTP server inside this process on 127.0.0.1 (throwaway host key "
        "and credentials) serving sample data at the paths config.json names, run "
        "each task into the paths config.json names, and print a summary.",
    )
    demo.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        metavar="PATH",
        help="config file whose tasks to run (default ./config.json)",
    )
    demo.add_argument(
        "--size",
        type=_size,
        default=4_000_000,
        metavar="BYTES",
        help="approximate CSV bytes of sample data (suffixes K, M, G; default 4M)",
    )

    serve = commands.add_parser(
        "serve",
        formatter_class=_Formatter,
        help="serve a folder over SFTP (read-only) for local development",
        description="Serve DIR read-only over SFTP; DIR is the server's /. Password from "
        "DATAFERRY_SERVE_PASSWORD, else a generated throwaway one.",
    )
    serve.add_argument("directory", type=Path, metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    serve.add_argument("--username", default="dataferry", help="login name (default dataferry)")
    serve.add_argument(
        "--known-hosts-out",
        type=Path,
        metavar="PATH",
        help="write the server's known_hosts entry here",
    )
    serve.add_argument(
        "--env-out",
        type=Path,
        metavar="PATH",
        help="write the connection variables (.env format, mode 0600) here",
    )
    serve.add_argument(
        "--sample",
        type=_size,
        nargs="?",
        const=4_000_000,
        default=None,
        metavar="BYTES",
        help="generate the sample dataset into DIR first",
    )
    return parser


def build_seed_parser(task: str) -> argparse.ArgumentParser:
    """The seed's task_N.py interface: --task and --config_file, plus the overrides."""
    parser = argparse.ArgumentParser(
        prog=f"{task}.py",
        description=f"Fetch and extract the dataset of {task} (dataferry). Settings come from "
        "--config_file's common and task sections, overridden by flags.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--task", default=task, help=f"task section in the config (default {task})")
    parser.add_argument(
        "--config_file",
        type=Path,
        default=None,
        metavar="PATH",
        help="config.json with common and per-task settings (optional when flags give both paths)",
    )
    _add_overrides(parser)
    _add_list_flag(parser)
    _add_modes(parser)
    return parser


def _add_list_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list",
        action="store_true",
        help="print every file the task leaves in its summary (by default: counts, bytes, "
        "time and destination, and the paths of up to 10 files)",
    )


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    """The parser of subcommand name (to show its usage for an unknown flag)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(name)
            return found if isinstance(found, argparse.ArgumentParser) else None
    return None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _size(text: str) -> int:
    from ..observe.units import parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _add_get(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = commands.add_parser(
        "get",
        help="fetch a file, folder or glob ad hoc: dataferry get [user@]host:path DEST",
        formatter_class=_Formatter,
        epilog=EPILOG,
        description="Fetch SOURCE into DEST with a task's engine and defaults (archives "
        "extracted, resume, verify, manifest), no config.json needed. SOURCE is "
        "[user@]host:path (scp style; host may be an ssh_config alias; a relative path or "
        "~/ is relative to the remote home) or sftp://[user@]host[:port]/path. The last "
        "part of the path may be a glob (/data/2024-*.csv.zip): matching files are fetched "
        "as a folder's are. Keys, known_hosts and jump hosts come from the environment, "
        ".env and the ssh config (docs/connecting.md).",
    )
    get.add_argument("source", metavar="SOURCE", help="[user@]host:path or sftp://...")
    get.add_argument(
        "destination",
        metavar="DEST",
        help="local file or folder; an existing folder (or a trailing /) receives the files",
    )
    get.add_argument(
        "--no-extract",
        dest="no_extract",
        action="store_true",
        help="keep archives as downloaded, without extracting them",
    )
    _add_overrides(get, skip=("file_save_path", "remote_file_path"), title="task settings")
    _add_list_flag(get)
    _add_modes(get)
