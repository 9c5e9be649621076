"""A TCP proxy that makes loopback look like a far link.

Every chunk read from one side is stamped on arrival and released to the
other side ``delay_s`` later (a delay line, per direction), so a 15 ms delay
each way gives a 30 ms round trip without limiting throughput: while one chunk
waits, the next ones are already being read. An optional rate cap models a
slower link: a chunk of ``n`` bytes occupies the link for ``n / rate`` seconds
after the previous one (a token bucket whose burst is one chunk), then takes
the fixed delay.

Use it as a library::

    async with DelayProxy(target_port, delay_s=0.015) as proxy:
        ...  # connect to 127.0.0.1:proxy.port

or from synchronous code (the benchmark's peers are subprocesses)::

    with ProxyThread(target_port, delay_s=0.015) as proxy:
        ...

``python -m bench.proxy --selftest`` checks the round trip and throughput;
``python -m bench.proxy --target-port PORT`` runs one until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

CHUNK = 256 * 1024
DEFAULT_DELAY_S = 0.015
DEFAULT_QUEUE_LIMIT = 64 * 1024 * 1024


@dataclass
class ProxyStats:
    """Bytes forwarded by a proxy, per direction, and connections accepted."""

    connections: int = 0
    bytes_to_target: int = 0  # client -> server (requests)
    bytes_to_client: int = 0  # server -> client (downloads)


class _DelayLine:
    """One direction of the link: FIFO of (release time, chunk)."""

    def __init__(self, delay_s: float, rate_bytes_per_s: float | None, queue_limit: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._delay = delay_s
        self._rate = rate_bytes_per_s
        self._limit = queue_limit
        self._items: deque[tuple[float, bytes | None]] = deque()
        self._queued = 0
        self._link_free_at = 0.0
        self._arrived = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def put(self, data: bytes | None) -> None:
        """Queue a chunk (None = end of stream); waits while the line is full."""
        now = self._loop.time()
        depart = now
        if self._rate and data:
            start = max(now, self._link_free_at)
            self._link_free_at = depart = start + len(data) / self._rate
        self._items.append((depart + self._delay, data))
        self._queued += len(data or b"")
        self._arrived.set()
        while self._queued > self._limit:
            self._space.clear()
            await self._space.wait()

    async def get(self) -> bytes | None:
        """The next chunk, once its release time has come."""
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        release_at, data = self._items[0]
        wait = release_at - self._loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._items.popleft()
        self._queued -= len(data or b"")
        if self._queued <= self._limit:
            self._space.set()
        return data


class DelayProxy:
    """Listen on 127.0.0.1 (free port) and forward to ``target_host:target_port``."""

    def __init__(
        self,
        target_port: int,
        *,
        delay_s: float = DEFAULT_DELAY_S,
        rate_bytes_per_s: float | None = None,
        target_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        queue_limit: int | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.delay_s = delay_s
        self.rate_bytes_per_s = rate_bytes_per_s
        if queue_limit is None:
            # With a rate cap, buffer about one bandwidth-delay product plus a
            # little, like a router would; without one, enough not to limit.
            queue_limit = (
                int(rate_bytes_per_s * (delay_s + 0.01)) + CHUNK
                if rate_bytes_per_s
                else DEFAULT_QUEUE_LIMIT
            )
        self.queue_limit = queue_limit
        self.stats = ProxyStats()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            try:
                server_r, server_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                client_w.close()
                return
            up = asyncio.create_task(self._pump(client_r, server_w, to_client=False))
            down = asyncio.create_task(self._pump(server_r, client_w, to_client=True))
            try:
                await asyncio.gather(up, down)
            finally:
                up.cancel()
                down.cancel()
                for writer in (client_w, server_w):
                    writer.close()
        except asyncio.CancelledError:
            pass  # the proxy is closing; asyncio would log a cancelled handler as an error
        finally:
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_client: bool
    ) -> None:
        line = _DelayLine(self.delay_s, self.rate_bytes_per_s, self.queue_limit)
        feeder = asyncio.create_task(self._feed(reader, line))
        try:
            while (chunk := await line.get()) is not None:
                writer.write(chunk)
                if to_client:
                    self.stats.bytes_to_client += len(chunk)
                else:
                    self.stats.bytes_to_target += len(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            feeder.cancel()
            writer.close()
        finally:
            await asyncio.gather(feeder, return_exceptions=True)

    @staticmethod
    async def _feed(reader: asyncio.StreamReader, line: _DelayLine) -> None:
        try:
            while data := await reader.read(CHUNK):
                await line.put(data)
        except (ConnectionError, OSError):
            pass
        await line.put(None)


class ProxyThread:
    """A :class:`DelayProxy` on its own event loop in a daemon thread."""

    def __init__(self, target_port: int, **kwargs: object) -> None:
        self._target_port = target_port
        self._kwargs = kwargs
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._proxy: DelayProxy | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._proxy is not None, "proxy not started"
        return self._proxy.port

    @property
    def stats(self) -> ProxyStats:
        assert self._proxy is not None, "proxy not started"
        return self._proxy.stats

    def start(self) -> ProxyThread:
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("delay proxy failed to start") from self._error
        if self._proxy is None:
            raise RuntimeError("delay proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with DelayProxy(self._target_port, **self._kwargs) as proxy:  # type: ignore[arg-type]
            self._proxy = proxy
            self._ready.set()
            await self._stop.wait()


# --- self-test ---------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _ping_pong(port: int, rounds: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rtts = []
    for _ in range(rounds):
        start = time.perf_counter()
        writer.write(b"x")
        await writer.drain()
        await reader.readexactly(1)
        rtts.append(time.perf_counter() - start)
    writer.close()
    return rtts


class _Sink:
    """A server that hashes what it receives and reports when it has ``expect`` bytes."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.digest = hashlib.sha256()
        self.received = 0
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            self.digest.update(data)
            self.received += len(data)
            if self.received >= self.expect:
                self.done.set()
        writer.close()


async def _throughput(port: int, sink: _Sink, payload: bytes, total: int) -> tuple[float, str]:
    """Send ``total`` bytes (payload repeated) to port; seconds until the sink has them."""
    sent = hashlib.sha256()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    remaining = total
    while remaining:
        piece = payload[: min(len(payload), remaining)]
        writer.write(piece)
        sent.update(piece)
        remaining -= len(piece)
        await writer.drain()
    await sink.done.wait()
    elapsed = time.perf_counter() - start
    writer.close()
    ok = "ok" if sent.hexdigest() == sink.digest.hexdigest() else "CORRUPTED"
    return elapsed, ok


async def _measure(total: int, proxy_kw: dict[str, float] | None) -> tuple[float, str]:
    """Seconds to push ``total`` bytes to a sink, directly or through a proxy."""
    sink = _Sink(total)
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    payload = os.urandom(4 * 1024 * 1024)
    try:
        if proxy_kw is None:
            return await _throughput(port, sink, payload, total)
        async with DelayProxy(port, **proxy_kw) as proxy:
            return await _throughput(proxy.port, sink, payload, total)
    finally:
        server.close()


def _verdict(good: bool) -> str:
    return "ok" if good else "FAIL"


async def selftest(delay_s: float) -> bool:
    """Print RTT, throughput and rate-cap checks; True when all pass."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = int(echo.sockets[0].getsockname()[1])
    async with DelayProxy(echo_port, delay_s=delay_s) as proxy:
        rtts = await _ping_pong(proxy.port, 20)
    echo.close()
    rtt = statistics.median(rtts)
    rtt_ok = 2 * delay_s <= rtt <= 2 * delay_s + 0.010
    print(
        f"ping-pong RTT: median {rtt * 1000:.1f} ms (min {min(rtts) * 1000:.1f}, "
        f"max {max(rtts) * 1000:.1f}); expected {2 * delay_s * 1000:.0f} ms: {_verdict(rtt_ok)}"
    )

    total = 256 * 1024 * 1024
    direct, integrity = await _measure(total, None)
    print(f"direct loopback: {total / direct / 1e6:.0f} MB/s ({integrity})")
    delayed, integrity = await _measure(total, {"delay_s": delay_s})
    mbps = total / delayed / 1e6
    # A proxy that slept per chunk, serially, would manage CHUNK / delay (~17 MB/s).
    fast_ok = mbps >= 100 and integrity == "ok"
    print(
        f"through the proxy ({delay_s * 1000:.0f} ms each way): {mbps:.0f} MB/s "
        f"({integrity}); expected >= 100 MB/s: {_verdict(fast_ok)}"
    )

    cap, capped_total = 20e6, 20_000_000
    capped, integrity = await _measure(capped_total, {"delay_s": delay_s, "rate_bytes_per_s": cap})
    mbps = capped_total / capped / 1e6
    cap_ok = 0.8 * cap / 1e6 <= mbps <= 1.05 * cap / 1e6 and integrity == "ok"
    print(
        f"rate cap {cap / 1e6:.0f} MB/s: measured {mbps:.1f} MB/s ({integrity}): {_verdict(cap_ok)}"
    )
    return rtt_ok and fast_ok and cap_ok


async def _serve(target_port: int, delay_s: float, rate: float | None) -> None:
    async with DelayProxy(target_port, delay_s=delay_s, rate_bytes_per_s=rate) as proxy:
        print(
            f"127.0.0.1:{proxy.port} -> 127.0.0.1:{target_port}, {delay_s * 1000:.0f} ms each way",
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--selftest", action="store_true", help="check RTT and throughput")
    parser.add_argument("--target-port", type=int, help="forward to 127.0.0.1:PORT")
    parser.add_argument(
        "--delay-ms", type=float, default=DEFAULT_DELAY_S * 1000, help="one-way delay (default 15)"
    )
    parser.add_argument(
        "--rate-mbps", type=float, default=None, help="cap each direction at this many MB/s"
    )
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000
    if args.selftest:
        return 0 if asyncio.run(selftest(delay)) else 1
    if args.target_port is None:
        parser.error("give --selftest or --target-port")
    rate = args.rate_mbps * 1e6 if args.rate_mbps else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target_port, delay, rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
