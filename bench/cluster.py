"""``python -m bench.cluster``: a run sharded over 1, 2 and 4 Dask workers, beside one process.

Rows: 2000 files of 64 KiB (one task), and the zip and the tar.gz of the
260 MB CSV (two tasks, ``--all``), over loopback to a real sshd. Contenders:
dataferry in one process, and ``--workers N`` (a local Dask cluster of N
processes; its start-up is part of the time, as a user would see it).
Interleaved round-robin per repetition; medians with the ratio to the single
process in the same run; results in bench/results/cluster-latest.json (.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sshd import running_sshd

from bench import report, tools, workloads
from bench.peers import REPO, Endpoint, Invocation
from bench.runner import log_tail, run_timed

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    label: str
    workers: int | None  # None: one process, no Dask
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="workloads scaled down 10-16x")
    parser.add_argument("--reps", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument("--workers", default="1,2,4", help="Dask rows (default 1,2,4)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "cluster-latest.json")
    return parser.parse_args(argv)


def _invocation(
    endpoint: Endpoint, config: dict[str, object], scratch: Path, workers: int | None
) -> Invocation:
    path = scratch / "config.json"
    path.write_text(json.dumps(config))
    env = {
        **endpoint.dataferry_env(),
        "PYTHONPATH": str(REPO / "src"),
        "DATAFERRY_MANIFEST": str(scratch / "manifest.json"),
    }
    argv = [sys.executable, "-m", "dataferry", "run", "--all", "--config", str(path)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return Invocation(argv, env)


def _configs(
    loaded: dict[str, workloads.Workload], dest: Path
) -> dict[str, tuple[str, dict[str, object], workloads.Manifest]]:
    common = {"overwrite": True, "max_tries": 1, "log-level": "WARNING", "include": ["*"]}
    small = loaded["small-2000"]
    rows: dict[str, tuple[str, dict[str, object], workloads.Manifest]] = {
        "small-2000": (
            small.spec.title,
            {
                "common": common,
                "files": {
                    "file_save_path": f"{dest / 'files'}/",
                    "remote_file_path": str(small.remote),
                },
            },
            small.expected,
        )
    }
    zip_, targz = loaded["zip"], loaded["targz"]
    # Both archives hold events.csv: each task extracts into its own folder.
    expected = {f"zip/{k}": v for k, v in zip_.expected.items()}
    expected |= {f"targz/{k}": v for k, v in targz.expected.items()}
    rows["archives"] = (
        f"{zip_.spec.title} + {targz.spec.title} (2 tasks)",
        {
            "common": common,
            "zip": {"file_save_path": f"{dest / 'zip'}/", "remote_file_path": str(zip_.remote)},
            "targz": {
                "file_save_path": f"{dest / 'targz'}/",
                "remote_file_path": str(targz.remote),
            },
        },
        expected,
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("Dask is not installed: pip install 'dataferry[dask]'", file=sys.stderr)
        return 2
    absent = tools.ensure({"sshd", "ssh-keygen", "/usr/bin/time"})
    if absent:
        print(f"missing tools: {', '.join(absent)}", file=sys.stderr)
        return 2
    specs = workloads.specs(args.quick)
    loaded = {
        name: workloads.ensure(specs[name], args.quick) for name in ("small-2000", "zip", "targz")
    }
    run_dir = workloads.CACHE / "cluster-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dest, scratch, logs = run_dir / "dest", run_dir / "scratch", run_dir / "logs"
    logs.mkdir()
    counts = [int(n) for n in args.workers.split(",")]
    tables: list[str] = []
    data: list[dict[str, object]] = []
    with running_sshd(run_dir / "sshd") as server:
        known_hosts = run_dir / "known_hosts"
        known_hosts.write_text(server.known_hosts_line() + "\n")
        user = server.password_user or server.username
        endpoint = Endpoint(server.host, server.port, user, server.client_key, known_hosts)
        for key, (title, config, expected) in _configs(loaded, dest).items():
            print(f"\n== {title} over loopback", flush=True)
            results = [Result("dataferry, one process", None)] + [
                Result(f"dataferry --workers {n}", n) for n in counts
            ]
            for rep in range(args.reps):
                shift = rep % len(results)
                for result in results[shift:] + results[:shift]:
                    for folder in (dest, scratch):
                        shutil.rmtree(folder, ignore_errors=True)
                        folder.mkdir(parents=True)
                    os.sync()
                    invocation = _invocation(endpoint, config, scratch, result.workers)
                    log = logs / f"{key}-{result.workers or 0}-{rep + 1}.log"
                    timing = run_timed(invocation, cwd=scratch, log=log, timeout=args.timeout)
                    if timing.timed_out:
                        error: str | None = f"timed out after {args.timeout:.0f} s"
                    elif timing.returncode != 0:
                        error = f"exit {timing.returncode}: {log_tail(log)}"
                    else:
                        error = workloads.verify(dest, expected)
                    if error:
                        result.failures.append(error)
                    else:
                        result.times.append(timing.seconds)
                    status = f"FAILED ({' '.join(error.split())[:200]})" if error else "ok"
                    print(
                        f"  rep {rep + 1}/{args.reps}  {result.label:<26} "
                        f"{timing.seconds:8.2f} s  {status}",
                        flush=True,
                    )
            base = statistics.median(results[0].times) if results[0].times else None
            lines = [f"| {title} | median s (min-max) | x one process |", "|---|---|---|"]
            for result in results:
                if not result.times:
                    lines.append(f"| {result.label} | failed | |")
                    continue
                median = statistics.median(result.times)
                ratio = f"{median / base:.2f}" if base else "-"
                lines.append(
                    f"| {result.label} | {median:.2f} ({min(result.times):.2f}-"
                    f"{max(result.times):.2f}) | {ratio} |"
                )
                data.append(
                    {"row": key, "label": result.label, "times": result.times, "median": median}
                )
            tables.append("\n".join(lines))
            print("\n" + tables[-1], flush=True)
    text = "\n\n".join(tables)
    payload = {"machine": report.machine_info(), "reps": args.reps, "rows": data}
    report.write(args.output, json.dumps(payload, indent=2) + "\n")
    report.write(args.output.with_suffix(".md"), text + "\n")
    print(f"\nwrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
