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
)

EPILOG = (
    "exit codes:\n"
    + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    + (
        "\n\nconnection settings come from the environment or ./.env: REMOTE_HOST_ADDRESS, "
        "REMOTE_PORT,\nUSERNAME, PASSWORD, SSH_KEY_FILE, SSH_KNOWN_HOSTS, SSH_HOST_KEY_POLICY "
        "(strict | accept-new)."
    )
)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "task settings (override config.json; precedence: flag > task section > common)"
    )
    for flag, key, metavar, help_text in OVERRIDES:
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


def _dest(key: str) -> str:
    return "override_" + key.replace("-", "_")


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """The override flags the user gave, keyed by their config.json spelling."""
    values: dict[str, object] = {}
    for key in [key for _, key, _, _ in OVERRIDES] + ["force", "frozen"]:
        value = getattr(args, _dest(key), None)
        if value is not None:
            values[key] = value
    if getattr(args, "include", None):
        values["include"] = list(args.include)
    return values


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
    return parser


def _size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    cleaned = text.strip().upper().removesuffix("B")
    factor = units.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 4M or 250000, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value
