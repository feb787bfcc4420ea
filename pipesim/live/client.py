"""A small asyncio client of the live server, for tests and scripts (QA checks against the mock backend).

It keeps every message it receives, decoded, in :attr:`LiveClient.messages`, and lets a test wait for
the next message that matches a condition.

>>> async def check(url):                                        # doctest: +SKIP
...     async with LiveClient(url, session_id="abc") as client:
...         await client.control("start", "abc")
...         await client.expect(lambda m: m.get("state") == "processing", timeout=10)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import SplitResult, urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipesim import _jsonsafe
from pipesim.errors import LiveError

Predicate = Callable[[dict[str, Any]], bool]


def split_websocket_url(url: str, error: type[LiveError] = LiveError) -> SplitResult:
    """``url``'s parts, or ``error`` (a :class:`~pipesim.errors.LiveError`) naming what is wrong with it: a
    user's URL for a command that connects (``pipesim record``, ``pipesim load``).

    >>> split_websocket_url("ws://127.0.0.1:8001/ws").port
    8001
    >>> split_websocket_url("http://127.0.0.1:8001/ws")
    Traceback (most recent call last):
    ...
    pipesim.errors.LiveError: http://127.0.0.1:8001/ws: not a WebSocket URL (expected ws://HOST:PORT/ws or wss://...)
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise error(f"{url}: not a valid URL ({exc})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise error(f"{url}: not a WebSocket URL (expected ws://HOST:PORT/ws or wss://...)")
    return parts


class LiveClient:
    """Connects to ``url`` (``ws://host:port/ws``), optionally watching only ``session_id`` (one or several).

    ``expect`` reads like a stream: each call searches from just after the previous match.
    """

    def __init__(self, url: str, session_id: str | Iterable[str] | None = None,
                 **connect_kwargs: Any) -> None:
        ids = [session_id] if isinstance(session_id, str) else list(session_id or [])
        self.url = f"{url}?{urlencode([('session_id', s) for s in ids])}" if ids else url
        self.messages: list[dict[str, Any]] = []
        #: When each message arrived (the event loop's clock, seconds), to check timing.
        self.arrivals: list[float] = []
        #: Close code and reason once the connection is closed.
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._connect_kwargs = connect_kwargs
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()
        self._closed = asyncio.Event()
        self._cursor = 0

    async def connect(self) -> LiveClient:
        self._ws = await connect(self.url, **self._connect_kwargs)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> LiveClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("not connected")
        return self._ws

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # Sending ---------------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a message as it is (``str``/``bytes``) or as JSON (``dict``)."""
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def control(self, action: str, session_id: str) -> None:
        """Send a seed ``conversation_control``."""
        await self.send({"type": "conversation_control", "action": action, "session_id": session_id})

    async def fault(self, fault: str, **fields: Any) -> None:
        """Send a ``fault_injection`` (``service=``, ``duration_s=``, ``session_id=``)."""
        await self.send({"type": "fault_injection", "fault": fault, **fields})

    # Receiving -------------------------------------------------------------------------------------
    def about(self, session_id: str) -> list[dict[str, Any]]:
        """The messages received about one session, in order."""
        return [m for m in self.messages if m.get("session_id") == session_id]

    async def expect(self, predicate: Predicate, timeout: float = 10.0) -> dict[str, Any]:
        """The next message (after the previous match) for which ``predicate`` is true.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``ConnectionError`` if the connection closes.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for i in range(self._cursor, len(self.messages)):
                        if predicate(self.messages[i]):
                            self._cursor = i + 1
                            return self.messages[i]
                    if self.closed:
                        raise ConnectionError(f"connection closed ({self.close_code} {self.close_reason!r}) "
                                              f"before a matching message")
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            tail = self.messages[-3:]
            raise TimeoutError(f"no matching message within {timeout} s ({len(self.messages)} received, "
                               f"last: {tail})") from None

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Wait for the connection to close; returns ``(close_code, close_reason)``."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        return self.close_code, self.close_reason

    async def _read(self) -> None:
        ws = self.ws
        clock = asyncio.get_running_loop().time
        try:
            async for raw in ws:
                self.arrivals.append(clock())
                self.messages.append(_jsonsafe.loads(raw))
                self._new.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = ws.close_code, ws.close_reason
            self._closed.set()
            self._new.set()
