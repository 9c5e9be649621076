"""The benchmark's workloads, created once and cached under ``bench/.cache/``.

Each workload is a file or folder that the local sshd serves at its absolute
path, plus a manifest of what a correct download must leave in the
destination (relative path -> size and SHA-256). A manifest is written last,
so an interrupted generation is redone on the next run.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

CACHE = Path(__file__).resolve().parent / ".cache"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

Kind = Literal["file", "folder", "zip", "tar.gz"]
Manifest = dict[str, tuple[int, str]]  # relative path -> (size, sha256 hex)


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    title: str
    kind: Kind
    size: int  # file size, per-file size for folders, CSV size for archives
    count: int = 1  # files in a folder


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    remote: Path  # what the server serves (absolute path on this machine)
    expected: Manifest  # what must land in the destination

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def total_bytes(self) -> int:
        """Bytes that cross the wire."""
        if self.remote.is_dir():
            return sum(p.stat().st_size for p in self.remote.iterdir())
        return self.remote.stat().st_size


def specs(quick: bool) -> dict[str, WorkloadSpec]:
    """The workloads of issue 3; ``quick`` scales each down 10-16x."""
    q = quick
    csv_size = 20_000_000 if q else 260_000_000
    all_specs = [
        WorkloadSpec(
            "file-1g", "64 MiB file" if q else "1 GiB file", "file", 64 * MiB if q else GiB
        ),
        WorkloadSpec(
            "file-200m",
            "20 MB file" if q else "200 MB file",
            "file",
            20_000_000 if q else 200_000_000,
        ),
        WorkloadSpec(
            "small-200", f"{20 if q else 200} x 64 KiB", "folder", 64 * KiB, 20 if q else 200
        ),
        WorkloadSpec(
            "small-2000", f"{200 if q else 2000} x 64 KiB", "folder", 64 * KiB, 200 if q else 2000
        ),
        WorkloadSpec("zip", f"zip of {csv_size // 1_000_000} MB CSV", "zip", csv_size),
        WorkloadSpec("targz", f"tar.gz of {csv_size // 1_000_000} MB CSV", "tar.gz", csv_size),
    ]
    return {s.name: s for s in all_specs}


# --- hashing -------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest_of(root: Path) -> Manifest:
    """Size and hash of every file under a folder (or of one file, keyed by its name)."""
    if root.is_file():
        return {root.name: (root.stat().st_size, file_sha256(root))}
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, file_sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- generation ------------------------------------------------------------------


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def _make_file(spec: WorkloadSpec, base: Path) -> tuple[Path, Manifest]:
    path = base / f"{spec.name}.bin"
    _random_file(path, spec.size)
    return path, manifest_of(path)


def _make_folder(spec: WorkloadSpec, base: Path) -> tuple[Path, Manifest]:
    folder = base / spec.name
    folder.mkdir()
    for i in range(spec.count):
        _random_file(folder / f"part-{i:05d}.bin", spec.size)
    # Files land in a folder named like the remote one; match by name inside it.
    return folder, manifest_of(folder)


def _sample_module() -> ModuleType:
    """dataferry.devserver.sample (the event-CSV generator), even while the package is mid-edit."""
    try:
        from dataferry.devserver import sample as _sample
    except ImportError:  # the package's __init__ may not import yet; the module stands alone
        path = Path(__file__).resolve().parent.parent / "src" / "dataferry" / "devserver"
        path /= "sample.py"
        spec = importlib.util.spec_from_file_location("_dataferry_sample", path)
        assert spec is not None and spec.loader is not None
        _sample = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = _sample  # dataclasses look their module up there
        spec.loader.exec_module(_sample)
    return _sample


def _make_csv(spec: WorkloadSpec, base: Path) -> Path:
    csv = base / "events.csv"
    rng = random.Random(f"dataferry-bench:{spec.size}")
    _sample_module().write_event_csv(csv, spec.size, rng)
    return csv


def _make_zip(spec: WorkloadSpec, base: Path) -> tuple[Path, Manifest]:
    csv = _make_csv(spec, base)
    archive = base / "events.csv.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.write(csv, csv.name)
    expected = manifest_of(csv)
    csv.unlink()
    return archive, expected


def _make_targz(spec: WorkloadSpec, base: Path) -> tuple[Path, Manifest]:
    csv = _make_csv(spec, base)
    archive = base / "events.tar.gz"
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        tar.add(csv, arcname=csv.name)
    expected = manifest_of(csv)
    csv.unlink()
    return archive, expected


_MAKERS = {"file": _make_file, "folder": _make_folder, "zip": _make_zip, "tar.gz": _make_targz}


def ensure(spec: WorkloadSpec, quick: bool, log: bool = True) -> Workload:
    """The workload, generating it under ``bench/.cache/workloads/`` if needed."""
    base = CACHE / "workloads" / ("quick" if quick else "full") / spec.name
    manifest_path = base / "manifest.json"
    if manifest_path.exists():
        data = json.loads(manifest_path.read_text())
        remote = Path(data["remote"])
        if data.get("spec") == spec.__dict__ and remote.exists():
            expected = {k: (v[0], v[1]) for k, v in data["expected"].items()}
            return Workload(spec, remote, expected)
    if log:
        print(f"creating workload {spec.name} ({spec.title}) in {base} ...", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    remote, expected = _MAKERS[spec.kind](spec, base)
    manifest_path.write_text(
        json.dumps({"spec": spec.__dict__, "remote": str(remote), "expected": expected}, indent=1)
    )
    return Workload(spec, remote, expected)


def prewarm(workload: Workload) -> None:
    """Read the workload once so every peer starts from a warm page cache."""
    paths = [workload.remote] if workload.remote.is_file() else sorted(workload.remote.iterdir())
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 * MiB):
                pass


# --- verification ------------------------------------------------------------------


def verify(dest: Path, expected: Manifest, *, hashes: bool = True) -> str | None:
    """None when every expected file is under ``dest`` with the right bytes, else why not.

    Peers lay files out differently (``scp -r`` into a new folder, archives
    extracted next to the download), so an expected ``a/b`` matches any
    ``.../a/b`` under ``dest``.
    """
    found: dict[str, list[Path]] = {}
    for path in dest.rglob("*"):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    for rel, (size, digest) in expected.items():
        candidates = [
            p for p in found.get(rel.rsplit("/", 1)[-1], []) if _matches(p.relative_to(dest), rel)
        ]
        if not candidates:
            return f"missing {rel}"
        if len(candidates) > 1:
            return f"{rel} found {len(candidates)} times"
        path = candidates[0]
        if path.stat().st_size != size:
            return f"{rel}: {path.stat().st_size} bytes, expected {size}"
        if hashes and file_sha256(path) != digest:
            return f"{rel}: content differs"
    return None


def _matches(found: Path, rel: str) -> bool:
    posix = found.as_posix()
    return posix == rel or posix.endswith("/" + rel)
