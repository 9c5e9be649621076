"""``dataferry verify [TASK | --all]``: re-hash what the manifest records, list what drifted."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..._defaults import DEFAULT_CONFIG_FILE
from ..._exceptions import ConfigError, DriftError
from ..._settings import default_manifest_path
from ...manifest import ManifestStore, verify_task
from .run import load_config


def verify_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, explicit=args.config is not None, default=DEFAULT_CONFIG_FILE)
    path = args.manifest or default_manifest_path(config)
    store = ManifestStore(path)
    if not store.path.exists():
        raise ConfigError(f"{path}: no manifest here; run a task first, or pass --manifest")
    manifest = store.load()
    if args.all:
        names = list(manifest.tasks)
        if not names:
            raise ConfigError(f"{path}: the manifest records no task yet")
    else:
        names = [args.task]
    drifted = 0
    for name in names:
        record = manifest.task(name)
        if record is None:
            known = ", ".join(manifest.tasks) or "none"
            raise ConfigError(f"{path}: no record of task {name} (recorded: {known})")
        results = sum(len(entry.results) for entry in record.entries.values() if entry.complete)
        base = Path(os.path.abspath(store.path)).parent
        drift: list[Any]
        if "://" in record.destination:  # s3://: checked through the sink
            from ...sinks.verify import verify_in_sink

            drift = list(verify_in_sink(record, rehash=not args.quick))
        else:
            drift = verify_task(record, base, rehash=not args.quick)
        for item in drift:
            print(f"{name}: {item}")
        if drift:
            drifted += len(drift)
            print(f"{name}: {len(drift)} of {results} file(s) missing or changed")
        else:
            print(f"{name}: {results} file(s) intact")
    sys.stdout.flush()
    if drifted:
        raise DriftError(
            f"{drifted} file(s) missing or changed since they were fetched (listed above); "
            "run the task again to repair them"
        )
    return 0
