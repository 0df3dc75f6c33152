"""The shared frame of the tests' raw HTTP servers: an asyncio loop in a thread, keep-alive.

A subclass implements `respond(request_line, headers, body, writer)` and returns False when
the connection must be dropped; `on_loop()` creates its asyncio objects on the server's loop.
Running in a thread with its own loop lets the client under test use any event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

S = TypeVar("S", bound="LoopServer")

REASONS = {
    200: b"OK",
    404: b"Not Found",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


class LoopServer:
    """Start a subclass with `with Subclass.running(...) as server:`."""

    name = "loop server"

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    @contextmanager
    def running(cls: type[S], **kwargs: Any) -> Iterator[S]:
        """Run the server in a background thread for the duration of the block."""
        server = cls(**kwargs)
        server._thread = threading.Thread(target=lambda: asyncio.run(server._serve()), daemon=True)
        server._thread.start()
        if not server._ready.wait(10):
            raise RuntimeError(f"{cls.name} did not start")
        try:
            yield server
        finally:
            server.call(lambda: server._stop.set() if server._stop else None)
            server._thread.join(10)

    def call(self, function: Callable[[], object]) -> None:
        """Run `function` on the server's loop (from the test's thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function)

    def on_loop(self) -> None:
        """Create the subclass's asyncio objects; runs on the server's loop before it listens."""

    async def respond(
        self,
        request_line: bytes,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False drops the connection."""
        raise NotImplementedError

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.on_loop()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
        for task in asyncio.all_tasks():  # lingering keep-alive connections
            if task is not asyncio.current_task():
                task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, _, rest = head.partition(b"\r\n")
                headers = _headers(rest)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self.respond(request_line, headers, body, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


def _headers(raw: bytes) -> dict[str, str]:
    lines = raw.decode("latin-1").split("\r\n")
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def send(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra_headers: bytes = b""
) -> None:
    """Write one response (JSON unless `extra_headers` names another Content-Type)."""
    content_type = (
        b"" if b"Content-Type" in extra_headers else b"Content-Type: application/json\r\n"
    )
    writer.write(
        b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n"
        % (status, REASONS[status], content_type, extra_headers, len(body))
        + body
    )
    await writer.drain()
