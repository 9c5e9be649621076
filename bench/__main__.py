"""``python -m bench``: dataferry against scp, sftp, rclone and the seed's approach.

Starts a real OpenSSH sshd on loopback and a delay proxy in front of it (30 ms
round trip), creates the workloads (cached in bench/.cache/), runs every row
of issue 3's table with the peers interleaved round-robin in each repetition,
prints medians (min-max) with dataferry's ratio to each peer and the targets,
and writes bench/results/latest.json (and latest.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from tests.support.sshd import OpenSSHServer, running_sshd  # the test fixtures

from bench import peers as peers_mod
from bench import report, tools, workloads
from bench.peers import Endpoint, Job, Peer
from bench.plan import ROWS, Row
from bench.proxy import DEFAULT_DELAY_S, ProxyThread
from bench.report import DATAFERRY, PeerResult, RowResult
from bench.runner import log_tail, run_timed

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = sorted({row.workload for row in ROWS})
    parser.add_argument("--quick", action="store_true", help="workloads scaled down 10-16x")
    parser.add_argument(
        "--only", action="append", choices=names, metavar="WORKLOAD", help=f"one of {names}"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--no-rtt", action="store_true", help="skip the 30 ms RTT rows")
    parser.add_argument(
        "--no-dataferry", action="store_true", help="peers only (e.g. to check the harness)"
    )
    parser.add_argument("--peers", help=f"comma-separated subset of {','.join(peers_mod.PEERS)}")
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_S * 1000)
    parser.add_argument("--rate-mbps", type=float, help="also cap the far link (MB/s)")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 900, quick 300)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.peers:
        unknown = set(args.peers.split(",")) - set(peers_mod.PEERS)
        if unknown:
            parser.error(f"unknown peers: {sorted(unknown)}")
    return args


def select(args: argparse.Namespace) -> list[tuple[Row, list[Peer]]]:
    wanted = set(args.peers.split(",")) if args.peers else None
    plan = []
    for row in ROWS:
        if args.only and row.workload not in args.only:
            continue
        if args.no_rtt and row.far:
            continue
        names = ([] if args.no_dataferry else [DATAFERRY]) + list(row.peers)
        chosen = [peers_mod.PEERS[n] for n in names if wanted is None or n in wanted]
        if chosen:
            plan.append((row, chosen))
    return plan


def label(peer: Peer, workload: workloads.Workload) -> str:
    if workload.spec.kind == "folder" and peer.name in ("scp", "sftp"):
        return f"{peer.name} -r"
    return peer.label


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def run_row(
    row: Row,
    peers: list[Peer],
    workload: workloads.Workload,
    endpoint: Endpoint,
    args: argparse.Namespace,
    run_dir: Path,
) -> RowResult:
    title = workload.spec.title
    print(f"\n== {title} over {row.link}: {', '.join(p.name for p in peers)}", flush=True)
    workloads.prewarm(workload)
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    results = {p.name: PeerResult(p.name, label(p, workload)) for p in peers}
    dest, scratch, logs = run_dir / "dest", run_dir / "scratch", run_dir / "logs"
    logs.mkdir(exist_ok=True)
    for rep in range(args.reps):
        shift = rep % len(peers)  # rotate who goes first: no peer always runs cold or warm
        for peer in peers[shift:] + peers[:shift]:
            _fresh(dest)
            _fresh(scratch)
            os.sync()  # no write-back of the previous run during this one
            invocation = peer.build(Job(workload, endpoint, dest, scratch))
            res = results[peer.name]
            res.command = res.command or invocation.shell()
            log = logs / f"{row.key}-{peer.name}-{rep + 1}.log"
            timing = run_timed(invocation, cwd=scratch, log=log, timeout=timeout)
            if timing.timed_out:
                error: str | None = f"timed out after {timeout:.0f} s"
            elif timing.returncode != 0:
                error = f"exit {timing.returncode}: {log_tail(log)}"
            else:
                error = workloads.verify(dest, workload.expected)
            if error:
                res.failures.append(error)
                status = f"FAILED ({' '.join(error.split())[:200]}; log {log})"
            else:
                res.times.append(timing.seconds)
                res.peak_rss_kib.append(timing.maxrss_kib)
                status = f"ok, peak RSS {timing.maxrss_kib / 1024:.0f} MB"
            print(
                f"  rep {rep + 1}/{args.reps}  {res.label:<22} {timing.seconds:8.2f} s  {status}",
                flush=True,
            )
    shutil.rmtree(dest, ignore_errors=True)
    return RowResult(row, title, workload.total_bytes, results)


def _endpoints(
    server: OpenSSHServer, proxy: ProxyThread | None, run_dir: Path
) -> tuple[Endpoint, Endpoint | None]:
    # The proxy's port is another "host" to SSH clients: same host key, both listed.
    known_hosts = run_dir / "known_hosts"
    lines = [server.known_hosts_line()]
    if proxy is not None:
        lines.append(f"[{server.host}]:{proxy.port} {server.host_public_key}")
    known_hosts.write_text("\n".join(lines) + "\n")

    # Log in as the fixtures' throwaway user when there is one (we are root): its
    # login shell is plain sh. Debian's bash sources ~/.bashrc for every command
    # run over ssh, and a heavy one (pyenv init...) would add ~60 ms to each of
    # rclone's per-file checksum commands and to `ssh cat`, a cost of this
    # machine's root account, not of the tools. AuthorizedKeysFile is absolute,
    # so the client key works for any user.
    user = server.password_user or server.username

    def endpoint(port: int) -> Endpoint:
        return Endpoint(server.host, port, user, server.client_key, known_hosts)

    return endpoint(server.port), endpoint(proxy.port) if proxy else None


def _jump_endpoint(
    stack: contextlib.ExitStack,
    target: OpenSSHServer,
    run_dir: Path,
    delay_s: float,
    rate: float | None,
) -> Endpoint:
    """The target reached through a second sshd (the jump host), the far link in front
    of the jump host: as a bastion far away with the data server next to it."""
    jump = stack.enter_context(running_sshd(run_dir / "jump-sshd"))
    proxy = ProxyThread(jump.port, delay_s=delay_s, rate_bytes_per_s=rate).start()
    stack.callback(proxy.stop)
    known_hosts = run_dir / "known_hosts_jump"
    known_hosts.write_text(
        f"{target.known_hosts_line()}\n[{jump.host}]:{proxy.port} {jump.host_public_key}\n"
    )
    # Both servers accept the target's client key.
    with (jump.workdir / "authorized_keys").open("a") as authorized:
        authorized.write(Path(f"{target.client_key}.pub").read_text())
    user = target.password_user or target.username
    return Endpoint(
        target.host,
        target.port,
        user,
        target.client_key,
        known_hosts,
        jump=f"{user}@{jump.host}:{proxy.port}",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = select(args)
    if not plan:
        print("nothing to run", file=sys.stderr)
        return 2
    needed = {"sshd", "ssh-keygen", "/usr/bin/time"} | {
        t for _, ps in plan for p in ps for t in p.tools
    }
    still_missing = tools.ensure(needed)
    if still_missing:
        print(
            f"missing tools: {', '.join(still_missing)} (run as root to install)", file=sys.stderr
        )
        return 2
    if any(p.name == DATAFERRY for _, ps in plan for p in ps):
        problem = tools.dataferry_works(str(peers_mod.DATAFERRY))
        if problem:
            print(
                f"dataferry is not usable: {problem}\n(use --no-dataferry to time the peers only)",
                file=sys.stderr,
            )
            return 2

    specs = workloads.specs(args.quick)
    loaded = {row.workload: workloads.ensure(specs[row.workload], args.quick) for row, _ in plan}
    run_dir = workloads.CACHE / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)

    results: list[RowResult] = []
    proxy_stats: dict[str, int] = {}
    with running_sshd(run_dir / "sshd") as server, contextlib.ExitStack() as stack:
        proxy = None
        rate = args.rate_mbps * 1e6 if args.rate_mbps else None
        if any(row.far and not row.jump for row, _ in plan):
            proxy = ProxyThread(
                server.port, delay_s=args.delay_ms / 1000, rate_bytes_per_s=rate
            ).start()
        via_jump = None
        if any(row.jump for row, _ in plan):
            via_jump = _jump_endpoint(stack, server, run_dir, args.delay_ms / 1000, rate)
        try:
            direct, far = _endpoints(server, proxy, run_dir)
            for row, peers in plan:
                endpoint = via_jump if row.jump else far if row.far else direct
                assert endpoint is not None
                before = proxy.stats.bytes_to_client if proxy and not row.jump else 0
                result = run_row(row, peers, loaded[row.workload], endpoint, args, run_dir)
                if row.far and not row.jump and proxy is not None:
                    # Evidence that the far row really went through the delay line.
                    result.proxy_bytes_to_client = proxy.stats.bytes_to_client - before
                results.append(result)
        finally:
            if proxy is not None:
                proxy_stats = dict(proxy.stats.__dict__)
                proxy.stop()

    table = report.text_table(results)
    print("\n" + table)
    if args.quick:
        print("(quick mode: scaled-down workloads; the targets are set for the full sizes)")
    settings = {
        "quick": args.quick,
        "reps": args.reps,
        "delay_ms_each_way": args.delay_ms,
        "rate_cap_mbps": args.rate_mbps,
        "proxy": proxy_stats,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    data = report.to_json(results, report.machine_info(), settings)
    report.write(args.output, json.dumps(data, indent=2) + "\n")
    report.write(args.output.with_suffix(".md"), report.markdown_table(results) + "\n")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-quick" if args.quick else ""
    report.write(args.output.parent / f"{stamp}{suffix}.json", json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {args.output} and {args.output.with_suffix('.md')}")
    failed = any(p.failures for r in results for p in r.peers.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
