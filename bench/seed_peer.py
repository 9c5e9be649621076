"""The seed's approach, as a peer: paramiko ``SFTPClient.get`` per file, then extract.

Files are fetched one after another with paramiko's defaults; a .zip or
.tar.gz is extracted next to the download afterwards and then deleted.
Run as ``python -m bench.seed_peer [options] REMOTE LOCAL``.
"""

from __future__ import annotations

import argparse
import posixpath
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import paramiko


def _get_tree(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    for entry in sftp.listdir_attr(remote):
        source = posixpath.join(remote, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):
            _get_tree(sftp, source, local / entry.filename)
        else:
            sftp.get(source, str(local / entry.filename))


def _extract(archive: Path) -> None:
    where = archive.parent
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(where)
    else:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(where, filter="data")
    archive.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_peer", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--extract", action="store_true", help="extract an archive afterwards")
    parser.add_argument("remote")
    parser.add_argument("local", type=Path)
    args = parser.parse_args(argv)

    client = paramiko.SSHClient()
    client.load_host_keys(args.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        args.host,
        port=args.port,
        username=args.user,
        key_filename=args.key,
        look_for_keys=False,
        allow_agent=False,
    )
    try:
        sftp = client.open_sftp()
        if stat.S_ISDIR(sftp.stat(args.remote).st_mode or 0):
            _get_tree(sftp, args.remote, args.local)
        else:
            sftp.get(args.remote, str(args.local))
        sftp.close()
    finally:
        client.close()
    if args.extract:
        _extract(args.local)
    return 0


if __name__ == "__main__":
    sys.exit(main())
