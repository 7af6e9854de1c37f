"""A TCP proxy that delays every chunk by `delay` seconds in each direction.

Why: a staging cluster in the next availability zone costs ~2 ms per round trip, and that is
where a per-event design collapses while batching does not. On loopback (~0.1 ms) the test
server's CPU dominates and the difference hides. With 1 ms each way, every request/response
pair costs 2 ms more than direct.

Each direction has its own ordered queue: a chunk is read, stamped `now + delay`, and a single
writer per direction sends chunks in order once their time has come. So the delay is added once
per chunk (pipelined: it does not accumulate over consecutive chunks), and order is preserved.
The loop runs on `select()`, not epoll: epoll timeouts are whole milliseconds (rounded up), which
turned a 1 ms delay into ~1.2 ms; `select()` takes microseconds. The timer's remaining overshoot
(kernel timer slack, wake-up) is measured at start and subtracted.

It also counts messages and bytes of a length-prefixed protocol in each direction (the MongoDB
wire protocol starts every message with a 16-byte header whose first field is the int32
little-endian `messageLength`), so a benchmark can report messages and bytes per 1,000 changes
without instrumenting the system under test. SIGUSR1 makes the script print its counters as a
JSON line without stopping (a snapshot at the start and at the end of a measurement).

In process: `port = DelayProxy("127.0.0.1", 27017, delay=0.001).start()` ... `.stop()`.
As a script: `python -m bench.delay_proxy --target 127.0.0.1:PORT --listen-port N --delay-ms 1`
(prints `listening <port>` once ready, and a JSON line of counters when stopped by SIGTERM).
Self-test: `python -m bench.delay_proxy --selftest` measures a pymongo `ping` both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import selectors
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

CHUNK = 64 * 1024
HEAD_BYTES = 256  # of each message sent up, kept to tell its command (`command_of`)
OP_MSG = 2013
BSON_STRING = 2
# Chunks queued per direction before reading pauses: bounds memory if one side stalls.
MAX_QUEUED_CHUNKS = 1024


def run_on_select_loop(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on a select()-based loop, for sub-millisecond timers (see module doc)."""
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())
                        ) as runner:
        runner.run(main)


async def sleep_overshoot(samples: int = 30, probe: float = 0.0005) -> float:
    """Mean seconds by which `asyncio.sleep` oversleeps on this loop, capped at 0.3 ms."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(samples):
        await asyncio.sleep(probe)
    return min(max((loop.time() - started) / samples - probe, 0.0), 0.0003)


class WireCounter:
    """Counts messages of a protocol whose messages start with an int32 LE total length.

    Chunks split messages anywhere (a header may straddle two reads, one read may hold many
    messages): the counter keeps the partial header and the bytes still owed by the current
    message across `feed` calls. A length below 4 (never valid) counts as a 4-byte message.

    That state belongs to one byte stream: each connection and direction gets a counter of its
    own, adding into a shared `total`. (One counter fed by every connection lost the framing
    as soon as two connections' chunks interleaved mid-message, read a length out of a
    document's bytes and then swallowed everything after it: messages stopped counting while
    bytes went on.)"""

    def __init__(self, total: WireCounter | None = None,
                 commands: Counter[str] | None = None) -> None:
        """`commands`: counts each message by its command and collection (`command_of`)."""
        self.messages = 0
        self.bytes = 0
        self.total = total
        self.commands = commands
        self._header = b""
        self._remaining = 0
        self._head = bytearray()  # the current message's first bytes after its length
        self._head_wanted = 0

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.total is not None:
            self.total.bytes += len(data)
        pos = 0
        while pos < len(data):
            if self._remaining:
                step = min(self._remaining, len(data) - pos)
                if self._head_wanted:
                    grab = data[pos : pos + min(step, self._head_wanted)]
                    self._head += grab
                    self._head_wanted -= len(grab)
                    if not self._head_wanted:
                        self._classify()
                self._remaining -= step
                pos += step
                continue
            take = 4 - len(self._header)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == 4:
                self.messages += 1
                if self.total is not None:
                    self.total.messages += 1
                self._remaining = max(int.from_bytes(self._header, "little") - 4, 0)
                self._header = b""
                if self.commands is not None:
                    self._head = bytearray()
                    self._head_wanted = min(self._remaining, HEAD_BYTES)
                    if not self._head_wanted:
                        self._classify()

    def _classify(self) -> None:
        if self.commands is not None:
            self.commands[command_of(bytes(self._head))] += 1


def command_of(head: bytes) -> str:
    """`find orders`, `update watchers`, `getMore orders`, `hello`: an OP_MSG's command (the
    first key of its body) and the collection it names (that key's string value, or a
    `collection` field among the first bytes), from the bytes after the message length."""
    if len(head) < 22 or int.from_bytes(head[8:12], "little") != OP_MSG or head[16] != 0:
        return "other"
    kind, name_end = head[21], head.find(b"\x00", 22)
    if name_end < 0:
        return "other"
    command = head[22:name_end].decode("utf-8", "replace")
    collection = _string_at(head, name_end + 1) if kind == BSON_STRING else None
    if collection is None:
        found = head.find(b"\x02collection\x00")
        collection = _string_at(head, found + 12) if found >= 0 else None
    return f"{command} {collection}" if collection else command


def _string_at(head: bytes, at: int) -> str | None:
    """A BSON string value (int32 length with its NUL, then the bytes) starting at `at`."""
    if at + 4 > len(head):
        return None
    length = int.from_bytes(head[at : at + 4], "little")
    end = at + 4 + length - 1
    return head[at + 4 : end].decode("utf-8", "replace") if length > 0 and end <= len(head) \
        else None


class DelayProxy:
    """Forwards `listen_host:listen_port` to `target_host:target_port`, delaying both ways."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay: float = 0.001,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.up = WireCounter()  # client -> server, all connections (totals only)
        self.commands: Counter[str] = Counter()  # messages up by command and collection
        self.down = WireCounter()  # server -> client
        self.connections = 0
        self._early = 0.0  # measured timer overshoot, subtracted from every wait
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- in-process (background thread) ---------------------------------------------------
    def start(self, timeout: float = 10.0) -> int:
        """Serve from a daemon thread; returns the listening port once it accepts."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                run_on_select_loop(self.serve(on_ready=lambda _port: ready.set()))
            except BaseException as exc:  # surfaced to the caller of start()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name=f"delay-proxy-{self.target}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self.stop()
            raise RuntimeError(f"delay proxy did not start: {failure[:1]}")
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return {"commands_up": dict(self.commands),
                "messages_up": self.up.messages, "bytes_up": self.up.bytes,
                "messages_down": self.down.messages, "bytes_down": self.down.bytes,
                "connections": self.connections}

    # -- the proxy itself -------------------------------------------------------------------
    async def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Run until `request_stop()` (or `stop()` from another thread)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._early = await sleep_overshoot() if self.delay > 0 else 0.0
        server = await asyncio.start_server(self._handle, *self.listen)
        self.port = int(server.sockets[0].getsockname()[1])
        if on_ready:
            on_ready(self.port)
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(client_r, server_w,
                                             WireCounter(self.up, self.commands)))
                group.create_task(self._pipe(server_r, client_w, WireCounter(self.down)))
        except (OSError, ExceptionGroup, asyncio.CancelledError):
            pass  # a side went away, or the proxy stops: close both
        finally:
            self._tasks.discard(task)
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        counter: WireCounter | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)

        async def pump() -> None:
            try:
                while data := await reader.read(CHUNK):
                    if counter is not None:
                        counter.feed(data)
                    await queue.put((loop.time() + self.delay, data))
            finally:
                await queue.put(None)

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - self._early - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        await asyncio.gather(pump(), deliver())


def measure_ping(uri: str, rounds: int = 300) -> float:
    """Mean milliseconds per `ping` round trip through `uri` (after a warm-up)."""
    from pymongo import MongoClient

    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        for _ in range(20):
            client.admin.command("ping")
        started = time.perf_counter()
        for _ in range(rounds):
            client.admin.command("ping")
        return (time.perf_counter() - started) / rounds * 1000
    finally:
        client.close()


def _selftest(delay: float) -> None:
    """Start a test server, measure ping direct and through the proxy, print the difference."""
    from stagesync.cli.local_servers import start_mongo_test_server

    server = start_mongo_test_server()
    proxy = DelayProxy("127.0.0.1", server.port, delay=delay)
    try:
        port = proxy.start()
        direct = measure_ping(server.uri)
        proxied = measure_ping(f"mongodb://127.0.0.1:{port}/?directConnection=true")
        print(f"ping direct {direct:.3f} ms, through proxy {proxied:.3f} ms, "
              f"overhead {proxied - direct:.3f} ms (expected ~{2 * delay * 1000:.1f} ms)")
    finally:
        proxy.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="HOST:PORT to forward to")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="per direction")
    parser.add_argument("--max-seconds", type=float, help="stop by itself after this long")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started it exits")
    parser.add_argument("--selftest", action="store_true", help="measure ping overhead and exit")
    args = parser.parse_args(argv)
    if args.selftest:
        _selftest(args.delay_ms / 1000)
        return 0
    if not args.target:
        parser.error("--target is required")
    host, _, port = args.target.rpartition(":")
    proxy = DelayProxy(host or "127.0.0.1", int(port), args.delay_ms / 1000,
                       args.listen_host, args.listen_port)

    parent = os.getppid()
    deadline = time.monotonic() + (args.max_seconds or float("inf"))

    async def watchdog() -> None:
        """Children of a benchmark must never outlive it, even if it is killed."""
        while time.monotonic() < deadline and not (args.exit_with_parent
                                                   and os.getppid() != parent):
            await asyncio.sleep(0.5)
        proxy.request_stop()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, proxy.request_stop)
        snapshots = 0

        def snapshot() -> None:
            nonlocal snapshots
            snapshots += 1
            print(json.dumps({**proxy.stats(), "snapshot": snapshots}), flush=True)

        loop.add_signal_handler(signal.SIGUSR1, snapshot)
        guard = asyncio.create_task(watchdog())
        await proxy.serve(on_ready=lambda p: print(f"listening {p}", flush=True))
        guard.cancel()

    run_on_select_loop(run())
    print(json.dumps(proxy.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
