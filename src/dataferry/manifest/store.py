"""Read and update the manifest file safely when several processes share it.

``update`` reads the file, merges the caller's entries into it and writes it
back, all while holding an exclusive lock on ``<manifest>.lock`` (the only
extra file it leaves).  Merging is per entry: a process only replaces or
removes the entries it names, so two runs (of different tasks, or of the same
task) writing at the same time never lose each other's records.

The new text goes to a temporary file in the same folder, which is flushed,
fsynced and renamed over the manifest; then the folder is fsynced.  At every
moment the manifest on disk is the old or the new complete document.  A
temporary file left by a process killed mid-write is removed by the next
update (only a lock holder ever writes one, so it cannot be in use).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .._exceptions import ConfigError, DestinationError
from .format import dumps, loads
from .model import Entry, Manifest, TaskRecord, name_problem

log = logging.getLogger("dataferry.manifest")

LOCK_WAIT_SECONDS = 600.0


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ManifestStore:
    """The manifest file at ``path`` (e.g. ``<project>/dataferry.manifest.json``)."""

    def __init__(self, path: Path, *, lock_timeout: float = LOCK_WAIT_SECONDS) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self._temporary = re.compile(rf"\.{re.escape(self.path.name)}\.[0-9a-f]{{16}}\.tmp")

    # -- reading --------------------------------------------------------------------------------

    def _read_text(self) -> str | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read manifest {self.path}: {_reason(exc)}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{self.path}: not UTF-8 text (bad byte at offset {exc.start})"
            ) from None

    def load(self) -> Manifest:
        """The manifest; an empty one when the file does not exist yet."""
        text = self._read_text()
        return Manifest() if text is None else loads(text, name=str(self.path))

    # -- updating -------------------------------------------------------------------------------

    def update(
        self,
        task: str,
        destination: str,
        upsert: Iterable[Entry] = (),
        remove: Iterable[str] = (),
    ) -> Manifest:
        """Record ``task``'s entries: remove the remote paths in ``remove``, then add ``upsert``.

        Entries of ``task`` not named here, and every other task, are kept as
        the file holds them at the moment of writing.  An upserted entry that
        lists a result another entry listed takes that result over.  If the
        manifest records ``task`` with a different destination, its old entries
        described another folder and are dropped.  Returns the manifest as
        written.
        """
        problem = name_problem(task)
        if problem:
            raise ValueError(f"task name {task!r}: {problem}")
        fresh = TaskRecord(destination)  # checks the destination
        upserts = list(upsert)
        removals = list(remove)
        for entry in upserts:
            if not isinstance(entry, Entry):
                raise ValueError(f"upsert: expected Entry, got {entry!r}")

        def change(manifest: Manifest) -> Manifest:
            record = manifest.task(task)
            if record is None or record.destination != destination:
                if record is not None:
                    log.info(
                        "%s: destination changed from %s to %s; dropping the old records",
                        task,
                        record.destination,
                        destination,
                    )
                record = fresh
            return manifest.with_task(task, record.merged(upserts, removals))

        return self._modify(change)

    def forget_task(self, task: str) -> Manifest:
        """Drop every record of ``task`` (e.g. after it was removed from the configuration)."""
        return self._modify(lambda manifest: manifest.with_task(task, None))

    def _modify(self, change: Callable[[Manifest], Manifest]) -> Manifest:
        with self._locked():
            self._remove_stale_temporaries()
            old_text = self._read_text()
            old = Manifest() if old_text is None else loads(old_text, name=str(self.path))
            new = change(old)
            new_text = dumps(new)
            if new_text != old_text and (old_text is not None or new.tasks):
                self._write(new_text)
            return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(
                f"cannot create folder {folder} for manifest {self.path}: {_reason(exc)}"
            ) from None
        lock = FileLock(self.lock_path)
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.warning(
                    "another dataferry process is updating %s; waiting up to %g s for it",
                    self.path,
                    self.lock_timeout,
                )
                lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise DestinationError(
                f"another dataferry process still holds {self.lock_path} after "
                f"{self.lock_timeout:g} s; let it finish (or stop it) and run again"
            ) from None
        except OSError as exc:
            raise DestinationError(f"cannot lock {self.lock_path}: {_reason(exc)}") from None
        try:
            yield
        finally:
            lock.release()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writers killed mid-write (we hold the lock: none is live)."""
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        for name in names:
            if self._temporary.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(self.path.parent / name)

    def _write(self, text: str) -> None:
        folder = self.path.parent
        temporary = folder / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        data = text.encode("utf-8")
        try:
            # 0o666 so the process umask decides, as for any file the user creates;
            # an existing manifest keeps its mode.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.fchmod(fd, os.stat(self.path).st_mode & 0o7777)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(exc, OSError):
                raise DestinationError(
                    f"cannot write manifest {self.path}: {_reason(exc)}"
                ) from None
            raise
        _fsync_folder(folder, self.path)


def _fsync_folder(folder: Path, manifest: Path) -> None:
    """Make the rename durable; filesystems that cannot fsync a folder are let be."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise DestinationError(
                f"cannot write manifest {manifest}: syncing {folder} failed: {_reason(exc)}"
            ) from None
    finally:
        os.close(fd)
