"""A TCP relay on loopback that delays every chunk by a fixed time each way: a network round trip, simulated.

Loopback answers in microseconds, so a loop that waits for each request before sending the next loses little
there; over a real network each request costs a round trip. Putting this relay between a client and Azurite
adds *delay* seconds to each direction (2 x *delay* per request and answer) while keeping the bytes' order and
the bandwidth: chunks are held until their time comes, not sent one after another.

It runs in a process of its own (`relay_process`), so relaying the bytes takes no time from the client's
event loop: ``python -m bench._latency TARGET_PORT DELAY`` prints the port it listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from types import TracebackType

_EOF = b""


class LatencyRelay:
    """Relay ``127.0.0.1:<port>`` to *target_port*, each direction *delay* seconds late.

    Args:
        target_port: the port of the service on 127.0.0.1.
        delay: seconds added to each direction.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LatencyRelay:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        """Relay until cancelled."""
        assert self._server is not None
        await self._server.serve_forever()

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
            finally:
                up_w.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            client_w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is _EOF:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(256 * 1024):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, _EOF))
            await sender
        finally:
            sender.cancel()


@contextlib.contextmanager
def relay_process(target_port: int, delay: float) -> Iterator[int]:
    """Run a relay to *target_port* in a child process; yields the port it listens on."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench._latency", str(target_port), str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        child.terminate()
        child.wait(timeout=10)


async def _main(target_port: int, delay: float) -> None:
    async with LatencyRelay(target_port, delay) as relay:
        print(relay.port, flush=True)
        await relay.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(int(sys.argv[1]), float(sys.argv[2])))
