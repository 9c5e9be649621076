"""Multipart uploads that survive the process: the upload id kept in a local sidecar.

An object store cannot be written in place: a file becomes visible only when
its multipart upload completes. Parts already stored by a run that was cut or
killed are found again through the sidecar (the upload id and which remote
file it carries) and ListParts; a part is reused when its size and MD5 (the
part's ETag) match the bytes the new run reads for it, so nothing already
stored is sent again and the object is byte-identical to the source.

Sidecars live in the user's state folder (``$XDG_STATE_HOME/dataferry/s3``,
else ``~/.local/state/dataferry/s3``), never under the bucket's prefix: nothing
of an unfinished run is visible there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...sources import RemoteFile

STATE_ENV = "XDG_STATE_HOME"


def state_directory() -> Path:
    base = os.environ.get(STATE_ENV) or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dataferry" / "s3"


def sidecar_path(bucket: str, key: str) -> Path:
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:32]
    return state_directory() / f"{digest}.json"


@dataclass(frozen=True)
class UploadRecord:
    """One unfinished multipart upload and the remote file it carries."""

    bucket: str
    key: str
    upload_id: str
    part_size: int
    remote_path: str
    size: int
    mtime: int

    def carries(self, remote: RemoteFile, bucket: str, key: str, part_size: int) -> bool:
        return (self.bucket, self.key, self.part_size) == (bucket, key, part_size) and (
            self.remote_path,
            self.size,
            self.mtime,
        ) == (remote.path, remote.size, remote.mtime)


def load_record(bucket: str, key: str) -> UploadRecord | None:
    try:
        raw = json.loads(sidecar_path(bucket, key).read_text())
        return UploadRecord(
            bucket=str(raw["bucket"]),
            key=str(raw["key"]),
            upload_id=str(raw["upload_id"]),
            part_size=int(raw["part_size"]),
            remote_path=str(raw["remote_path"]),
            size=int(raw["size"]),
            mtime=int(raw["mtime"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_record(record: UploadRecord) -> None:
    path = sidecar_path(record.bucket, record.key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record.__dict__) + "\n")
    os.replace(temporary, path)


def drop_record(bucket: str, key: str) -> None:
    with contextlib.suppress(OSError):
        sidecar_path(bucket, key).unlink()


def has_record(bucket: str, key: str) -> bool:
    return sidecar_path(bucket, key).exists()
