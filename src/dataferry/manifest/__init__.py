"""One human-readable manifest per project: what each task fetched and what it became.

Like a lock file: stable order, small diffs, safe to commit to pin a dataset.
Pure logic and local file I/O (no SSH, no asyncio):

* :mod:`.model`: frozen records (:class:`Manifest`, :class:`TaskRecord`,
  :class:`Entry`, :class:`SourceRecord`, :class:`ResultRecord`).
* :mod:`.format`: :func:`dumps` / :func:`loads` of the JSON text.
* :mod:`.store`: :class:`ManifestStore`, locked read-modify-write, atomic.
* :mod:`.verify`: :func:`verify_task` compares records with the disk.
"""

from __future__ import annotations

from .format import FORMAT_VERSION, MANIFEST_NAME, dumps, loads
from .model import Entry, Manifest, ResultRecord, SourceRecord, TaskRecord
from .store import LOCK_WAIT_SECONDS, ManifestStore
from .verify import Drift, destination_label, record_result, sha256_file, verify_task

__all__ = [
    "FORMAT_VERSION",
    "LOCK_WAIT_SECONDS",
    "MANIFEST_NAME",
    "Drift",
    "Entry",
    "Manifest",
    "ManifestStore",
    "ResultRecord",
    "SourceRecord",
    "TaskRecord",
    "destination_label",
    "dumps",
    "loads",
    "record_result",
    "sha256_file",
    "verify_task",
]
