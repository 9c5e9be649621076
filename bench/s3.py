"""``python -m bench.s3``: the ``s3://`` row, and the S3 client libraries compared.

The row (issue 13): 1 GiB from a real sshd over SFTP into SeaweedFS (tests'
fixture, loopback), ``dataferry run`` with ``file_save_path: s3://...`` against
``rclone copyto`` from an sftp remote to an s3 remote (rclone streams too), the
two interleaved in each repetition; medians, dataferry's ratio to rclone (target
<= 0.6) and each one's peak RSS. Every run's object is checked (size, sha256).

``--libraries``: 1 GiB generated in memory, uploaded by each candidate client in
its own process (time, peak RSS): botocore through dataferry's part writer,
obstore, and s3fs (aiobotocore), the last from ``--s3fs-python`` (its own venv:
aiobotocore pins another botocore). Results go to bench/results/s3-latest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from tests.support.s3 import ADMIN, SeaweedS3, make_bucket, start_seaweed
from tests.support.sshd import running_sshd

from bench import report, workloads
from bench.peers import REPO, Endpoint, Invocation
from bench.runner import Timing, log_tail, run_timed

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.6
MiB = 1 << 20


def dataferry_s3(
    endpoint: Endpoint, remote: Path, url: str, s3: SeaweedS3, scratch: Path
) -> Invocation:
    config = {
        "common": {"overwrite": True, "max_tries": 1, "log-level": "WARNING"},
        "bench": {"file_save_path": url, "remote_file_path": str(remote)},
    }
    path = scratch / "config.json"
    path.write_text(json.dumps(config))
    env = {
        **endpoint.dataferry_env(),
        "DATAFERRY_MANIFEST": str(scratch / "manifest.json"),
        "XDG_STATE_HOME": str(scratch / "state"),
        **s3.environment(),
    }
    # This checkout's dataferry (the venv's console script may be another checkout's).
    env["PYTHONPATH"] = str(REPO / "src")
    return Invocation(
        [sys.executable, "-m", "dataferry", "run", "bench", "--config", str(path)], env
    )


def rclone_s3(endpoint: Endpoint, remote: Path, bucket: str, key: str, s3: SeaweedS3) -> Invocation:
    target = (
        f":s3,provider=Other,endpoint='{s3.endpoint}',region=us-east-1,"
        f"access_key_id={ADMIN[0]},secret_access_key={ADMIN[1]}:{bucket}/{key}"
    )
    # rclone refuses an AWS_CA_BUNDLE with a plain-http endpoint: not rclone's speed at stake.
    source = endpoint.rclone_remote(remote)
    return Invocation(
        ["env", "-u", "AWS_CA_BUNDLE", "rclone", "--config", "", "copyto", source, target]
    )


def object_digest(s3: SeaweedS3, bucket: str, key: str) -> tuple[int, str]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    while chunk := body.read(8 * MiB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def run_row(args: argparse.Namespace, s3: SeaweedS3, work: Path) -> dict[str, object]:
    spec = workloads.specs(args.quick)["file-1g"]
    workload = workloads.ensure(spec, args.quick)
    expected = next(iter(workload.expected.values()))
    times: dict[str, list[float]] = {"dataferry": [], "rclone": []}
    rss: dict[str, list[int]] = {"dataferry": [], "rclone": []}
    commands: dict[str, str] = {}
    failures: list[str] = []
    with running_sshd(work / "sshd") as server:
        known = work / "known_hosts"
        known.write_text(server.known_hosts_line() + "\n")
        user = server.password_user or server.username
        endpoint = Endpoint(server.host, server.port, user, server.client_key, known)
        workloads.prewarm(workload)
        for rep in range(args.reps):
            order = ["dataferry", "rclone"] if rep % 2 == 0 else ["rclone", "dataferry"]
            for peer in order:
                bucket = make_bucket(s3, f"bench-{peer}-{rep}")
                key = f"landing/{workload.remote.name}"
                scratch = work / f"scratch-{peer}-{rep}"
                scratch.mkdir()
                if peer == "dataferry":
                    invocation = dataferry_s3(
                        endpoint, workload.remote, f"s3://{bucket}/{key}", s3, scratch
                    )
                else:
                    invocation = rclone_s3(endpoint, workload.remote, bucket, key, s3)
                commands.setdefault(peer, invocation.shell().replace(ADMIN[1], "SECRET"))
                log = work / f"{peer}-{rep}.log"
                timing = run_timed(invocation, cwd=scratch, log=log, timeout=args.timeout)
                problem = _check(timing, log, s3, bucket, key, expected)
                if problem:
                    failures.append(f"{peer} rep {rep + 1}: {problem}")
                    print(f"  rep {rep + 1} {peer:<10} FAILED {problem}", flush=True)
                else:
                    times[peer].append(timing.seconds)
                    rss[peer].append(timing.maxrss_kib)
                    print(
                        f"  rep {rep + 1} {peer:<10} {timing.seconds:7.2f} s  "
                        f"peak RSS {timing.maxrss_kib / 1024:.0f} MB",
                        flush=True,
                    )
                _empty_bucket(s3, bucket)
    row: dict[str, object] = {
        "row": f"{spec.title} SFTP (loopback sshd) -> S3 (SeaweedFS, loopback)",
        "bytes": spec.size,
        "reps": args.reps,
        "commands": commands,
        "failures": failures,
    }
    for peer in times:
        if times[peer]:
            row[peer] = {
                "median_s": statistics.median(times[peer]),
                "min_s": min(times[peer]),
                "max_s": max(times[peer]),
                "peak_rss_mb": max(rss[peer]) / 1024,
            }
    if times["dataferry"] and times["rclone"]:
        ratio = statistics.median(times["dataferry"]) / statistics.median(times["rclone"])
        row["ratio_to_rclone"] = ratio
        row["target_ratio"] = TARGET_RATIO
        row["meets_target"] = ratio <= TARGET_RATIO
    return row


def _check(
    timing: Timing, log: Path, s3: SeaweedS3, bucket: str, key: str, expected: tuple[int, str]
) -> str | None:
    if timing.timed_out:
        return "timed out"
    if timing.returncode != 0:
        return f"exit {timing.returncode}: {log_tail(log)}"
    try:
        got = object_digest(s3, bucket, key)
    except Exception as exc:
        found = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        return f"no object: {exc}; the bucket holds {[item['Key'] for item in found]}"
    return None if got == tuple(expected) else f"object differs: {got} != {expected}"


def _empty_bucket(s3: SeaweedS3, bucket: str) -> None:
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


# -- the client libraries -------------------------------------------------------------

_DATA = """
import sys
MiB = 1 << 20
SIZE = int(sys.argv[1])
BLOCK = bytes(range(256)) * 4096  # 1 MiB
def chunks(size=256 * 1024):
    sent = 0
    while sent < SIZE:
        n = min(size, SIZE - sent)
        start = (sent // size) % 16 * 4096
        yield (BLOCK[start:] + BLOCK[:start])[:n]
        sent += n
"""

LIBRARIES = {
    "botocore (dataferry's part writer)": """
import asyncio
from dataferry.sinks.s3 import S3Sink
from dataferry.sources import RemoteFile
async def main():
    sink = S3Sink("s3://" + sys.argv[2] + "/lib/botocore.bin")
    writer = await sink.open_part("x.bin", RemoteFile("/x.bin", SIZE, 1))
    for chunk in chunks():
        await writer.write(chunk)
    await writer.commit(1)
asyncio.run(main())
""",
    "obstore 0.12.1 (put, 8 MiB parts, 4 at once)": """
import obstore
from obstore.store import S3Store
store = S3Store(sys.argv[2])  # endpoint, keys, region and allow_http from AWS_* variables
obstore.put(store, "lib/obstore.bin", chunks(), chunk_size=8 * MiB, max_concurrency=4)
""",
    "s3fs 2026.9.0 / aiobotocore 3.10.0 (open wb, 8 MiB blocks)": """
import s3fs
fs = s3fs.S3FileSystem()  # endpoint, keys from AWS_* variables
with fs.open(sys.argv[2] + "/lib/s3fs.bin", "wb", block_size=8 * MiB) as handle:
    for chunk in chunks():
        handle.write(chunk)
""",
}


def run_libraries(args: argparse.Namespace, s3: SeaweedS3, work: Path) -> dict[str, object]:
    size = 64 * MiB if args.quick else 1 << 30
    results: dict[str, object] = {"bytes": size}
    for name, body in LIBRARIES.items():
        python = args.s3fs_python if name.startswith("s3fs") else sys.executable
        if python is None:
            results[name] = {"skipped": "no --s3fs-python given"}
            continue
        script = work / f"lib-{len(results)}.py"
        script.write_text(textwrap.dedent(_DATA) + textwrap.dedent(body))
        times, peaks = [], []
        for rep in range(args.reps):
            bucket = make_bucket(s3, f"lib-{len(results)}-{rep}")
            env = {**s3.environment(), "PYTHONPATH": str(REPO / "src")}
            env["XDG_STATE_HOME"] = str(work / "state")
            log = work / f"lib-{len(results)}-{rep}.log"
            timing = run_timed(
                Invocation([python, str(script), str(size), bucket], env),
                cwd=work,
                log=log,
                timeout=args.timeout,
            )
            if timing.returncode != 0:
                results[name] = {"failed": log_tail(log)}
                break
            times.append(timing.seconds)
            peaks.append(timing.maxrss_kib / 1024)
            print(f"  {name:<58} {timing.seconds:6.2f} s  peak RSS {peaks[-1]:.0f} MB", flush=True)
            _empty_bucket(s3, bucket)
        if times:
            results[name] = {
                "median_s": statistics.median(times),
                "peak_rss_mb": max(peaks),
                "runs": len(times),
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--libraries", action="store_true", help="compare the client libraries")
    parser.add_argument("--no-row", action="store_true", help="skip the SFTP -> S3 row")
    parser.add_argument("--s3fs-python", help="a Python with s3fs installed (its own venv)")
    parser.add_argument("--output", type=Path, default=RESULTS / "s3-latest.json")
    args = parser.parse_args(argv)
    if not shutil.which("rclone") and not args.no_row:
        print("rclone is needed for the row (apt-get install rclone)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dataferry-bench-s3-"))
    work.chmod(0o755)  # sshd reads the client key's authorized_keys in here as the test user
    s3 = start_seaweed(work / "seaweed")
    data: dict[str, object] = {"machine": report.machine_info(), "quick": args.quick}
    try:
        if not args.no_row:
            print("== 1 GiB SFTP -> S3: dataferry vs rclone copyto", flush=True)
            data["row"] = run_row(args, s3, work)
        if args.libraries:
            print("== S3 client libraries: 1 GiB upload from memory", flush=True)
            data["libraries"] = run_libraries(args, s3, work)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.write(args.output, json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in data.items() if k != "machine"}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
