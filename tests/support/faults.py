"""A TCP proxy that injects faults between dataferry and a real SSH server.

It forwards bytes both ways on 127.0.0.1 and can reset each connection after a
seeded random number of server-to-client bytes (a bounded number of times in
total), and cap the server-to-client rate so a transfer lasts long enough to be
interrupted. It counts the bytes it delivered, so a test can tell a resumed
transfer from a restarted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FaultPlan:
    resets: int = 0  # how many connections to reset in total
    reset_after: tuple[int, int] = (1 << 20, 4 << 20)  # bytes to the client before a reset
    rate: float | None = None  # server-to-client bytes per second, None = unlimited
    seed: int = 1


@dataclass
class FaultProxy:
    target_port: int
    plan: FaultPlan = field(default_factory=FaultPlan)
    port: int = 0
    bytes_to_client: int = 0
    resets_done: int = 0
    connections: int = 0
    reset_points: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        # port: 0 picks a free one; a given port lets a test bring "the server" back.
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for task in asyncio.all_tasks(self._loop):
            if task is not asyncio.current_task():
                task.cancel()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            client_writer.close()
            return
        reset_at: int | None = None
        if self.resets_done < self.plan.resets:
            reset_at = self._rng.randint(*self.plan.reset_after)

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def downstream() -> None:
            sent = 0
            started = time.monotonic()
            while data := await server_reader.read(65536):
                if reset_at is not None and sent + len(data) >= reset_at:
                    self.resets_done += 1
                    self.reset_points.append(sent)
                    _reset(client_writer)
                    _reset(server_writer)
                    return
                client_writer.write(data)
                await client_writer.drain()
                sent += len(data)
                self.bytes_to_client += len(data)
                if self.plan.rate:
                    ahead = sent / self.plan.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            client_writer.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # When one side is done (or was reset), the other has nothing left to do.
            await asyncio.wait(tasks, timeout=1)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_writer, server_writer):
                with contextlib.suppress(Exception):
                    writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a dropped link or a crashed middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
