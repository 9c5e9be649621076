"""``python -m bench.scale``: several connections per file through a per-connection cap.

Many servers cap each SSH connection (a per-session shaper, one core per sshd
process for the cipher). This models that with the benchmark's delay proxy,
which caps every TCP connection on its own (each direction of each connection
has its own token bucket; loopback ``tc`` would cap all of them together): the
200 MB file with dataferry over 1, 2, 4 and 8 connections (``--connections``),
beside ``lftp pget -n 4`` (installed with apt when root and missing) and scp.
Rows are interleaved round-robin in each repetition and reported as medians,
with each row's time as a ratio to dataferry over one connection in the same
run; results go to bench/results/scale-latest.json (and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sshd import running_sshd

from bench import report, tools, workloads
from bench.peers import REPO, Endpoint, Invocation
from bench.proxy import ProxyThread
from bench.runner import log_tail, run_timed

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO_4 = 0.3  # issue 14: 4 connections take at most 0.3x the time of 1


@dataclass
class Contender:
    key: str
    label: str
    tools: tuple[str, ...] = ()
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    command: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the 20 MB file instead of 200 MB")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--connections", default="1,2,4,8", help="dataferry rows (default 1,2,4,8)")
    parser.add_argument(
        "--rate-mbit", type=float, default=100.0, help="cap per connection, Mbit/s (default 100)"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=1.0, help="one-way delay of the proxy (default 1 ms)"
    )
    parser.add_argument("--no-peers", action="store_true", help="dataferry rows only")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale-latest.json")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    try:
        args.connection_counts = [int(n) for n in args.connections.split(",")]
    except ValueError:
        parser.error("--connections: expected numbers separated by commas, e.g. 1,2,4,8")
    return args


def dataferry(endpoint: Endpoint, remote: Path, dest: Path, scratch: Path, n: int) -> Invocation:
    """This checkout's dataferry (src/ first on the path), as a user would run it."""
    config = {
        "common": {"overwrite": True, "max_tries": 1, "log-level": "WARNING"},
        "bench": {"file_save_path": str(dest / remote.name), "remote_file_path": str(remote)},
    }
    path = scratch / "config.json"
    path.write_text(json.dumps(config))
    env = {
        **endpoint.dataferry_env(),
        "PYTHONPATH": str(REPO / "src"),
    }
    argv = [sys.executable, "-m", "dataferry", "run", "bench", "--config", str(path)]
    return Invocation([*argv, "--connections", str(n)], env)


def lftp_pget(endpoint: Endpoint, remote: Path, dest: Path, n: int) -> Invocation:
    """``lftp pget -n N`` over sftp, its ssh verifying the host key like the others."""
    ssh = shlex.join(["ssh", "-a", "-x", *endpoint.ssh_options()])
    script = (
        f"set sftp:connect-program {shlex.quote(ssh)}; set net:max-retries 1; "
        f"open -u {endpoint.user}, -p {endpoint.port} sftp://{endpoint.host}; "
        f"pget -n {n} {shlex.quote(str(remote))} -o {shlex.quote(str(dest / remote.name))}"
    )
    return Invocation(["lftp", "-c", script], {})


def scp(endpoint: Endpoint, remote: Path, dest: Path) -> Invocation:
    return Invocation(
        [
            "scp",
            *endpoint.ssh_options(),
            "-P",
            str(endpoint.port),
            f"{endpoint.user}@{endpoint.host}:{remote}",
            str(dest / remote.name),
        ],
        {},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    contenders = [
        Contender(f"dataferry-{n}", f"dataferry --connections {n}") for n in args.connection_counts
    ]
    if not args.no_peers:
        contenders += [
            Contender("lftp-pget-4", "lftp pget -n 4", ("lftp", "ssh")),
            Contender("scp", "scp", ("scp",)),
        ]
    tools.PACKAGES.setdefault("lftp", "lftp")
    absent = tools.ensure(
        {"sshd", "ssh-keygen", "/usr/bin/time"} | {t for c in contenders for t in c.tools}
    )
    if {"sshd", "ssh-keygen", "/usr/bin/time"} & set(absent):
        print(f"missing tools: {', '.join(absent)} (run as root to install)", file=sys.stderr)
        return 2
    contenders = [c for c in contenders if not set(c.tools) & set(absent)]
    spec = workloads.specs(args.quick)["file-200m"]
    workload = workloads.ensure(spec, args.quick)
    run_dir = workloads.CACHE / "scale-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    rate = args.rate_mbit * 1e6 / 8
    with running_sshd(run_dir / "sshd") as server:
        proxy = ProxyThread(
            server.port, delay_s=args.delay_ms / 1000, rate_bytes_per_s=rate
        ).start()
        try:
            known_hosts = run_dir / "known_hosts"
            known_hosts.write_text(
                f"{server.known_hosts_line()}\n"
                f"[{server.host}]:{proxy.port} {server.host_public_key}\n"
            )
            user = server.password_user or server.username
            endpoint = Endpoint(server.host, proxy.port, user, server.client_key, known_hosts)
            print(
                f"== {spec.title} through {args.rate_mbit:g} Mbit/s per connection, "
                f"{2 * args.delay_ms:g} ms round trip",
                flush=True,
            )
            _run(args, contenders, workload, endpoint, run_dir)
            connections_seen = proxy.stats.connections
        finally:
            proxy.stop()
    return _report(args, contenders, spec.title, connections_seen)


def _run(
    args: argparse.Namespace,
    contenders: list[Contender],
    workload: workloads.Workload,
    endpoint: Endpoint,
    run_dir: Path,
) -> None:
    dest, scratch, logs = run_dir / "dest", run_dir / "scratch", run_dir / "logs"
    logs.mkdir()
    workloads.prewarm(workload)
    for rep in range(args.reps):
        shift = rep % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            for folder in (dest, scratch):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            os.sync()
            if contender.key.startswith("dataferry-"):
                n = int(contender.key.rsplit("-", 1)[1])
                invocation = dataferry(endpoint, workload.remote, dest, scratch, n)
            elif contender.key == "lftp-pget-4":
                invocation = lftp_pget(endpoint, workload.remote, dest, 4)
            else:
                invocation = scp(endpoint, workload.remote, dest)
            contender.command = contender.command or invocation.shell()
            log = logs / f"{contender.key}-{rep + 1}.log"
            timing = run_timed(invocation, cwd=scratch, log=log, timeout=args.timeout)
            if timing.timed_out:
                error: str | None = f"timed out after {args.timeout:.0f} s"
            elif timing.returncode != 0:
                error = f"exit {timing.returncode}: {log_tail(log)}"
            else:
                error = workloads.verify(dest, workload.expected)
            if error:
                contender.failures.append(error)
            else:
                contender.times.append(timing.seconds)
            status = f"FAILED ({' '.join(error.split())[:200]})" if error else "ok"
            print(
                f"  rep {rep + 1}/{args.reps}  {contender.label:<26} "
                f"{timing.seconds:8.2f} s  {status}",
                flush=True,
            )


def _report(
    args: argparse.Namespace, contenders: list[Contender], title: str, connections_seen: int
) -> int:
    medians = {c.key: statistics.median(c.times) for c in contenders if c.times}
    base = medians.get("dataferry-1")
    lines = [
        f"| {title}, {args.rate_mbit:g} Mbit/s per connection | median s (min-max) "
        "| x dataferry 1 conn |",
        "|---|---|---|",
    ]
    for c in contenders:
        if not c.times:
            lines.append(f"| {c.label} | failed: {c.failures[0][:80] if c.failures else '-'} | |")
            continue
        ratio = f"{medians[c.key] / base:.2f}" if base else "-"
        spread = f"{min(c.times):.2f}-{max(c.times):.2f}"
        lines.append(f"| {c.label} | {medians[c.key]:.2f} ({spread}) | {ratio} |")
    table = "\n".join(lines)
    print("\n" + table)
    verdict = ""
    if base and "dataferry-4" in medians:
        ratio4 = medians["dataferry-4"] / base
        met = "met" if ratio4 <= TARGET_RATIO_4 else "NOT met"
        verdict = f"target: 4 connections <= {TARGET_RATIO_4}x of 1: {ratio4:.2f}x, {met}"
        print(verdict)
    data = {
        "title": title,
        "settings": {
            "quick": args.quick,
            "reps": args.reps,
            "rate_mbit_per_connection": args.rate_mbit,
            "delay_ms_each_way": args.delay_ms,
            "proxy_connections": connections_seen,
        },
        "machine": report.machine_info(),
        "rows": [
            {
                "key": c.key,
                "label": c.label,
                "command": c.command,
                "times": c.times,
                "median": medians.get(c.key),
                "ratio_to_dataferry_1": (medians[c.key] / base)
                if base and c.key in medians
                else None,
                "failures": c.failures,
            }
            for c in contenders
        ],
        "verdict": verdict,
    }
    report.write(args.output, json.dumps(data, indent=2) + "\n")
    report.write(args.output.with_suffix(".md"), table + "\n\n" + verdict + "\n")
    print(f"\nwrote {args.output} and {args.output.with_suffix('.md')}")
    return 1 if any(c.failures for c in contenders) else 0


if __name__ == "__main__":
    sys.exit(main())
