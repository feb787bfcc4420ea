"""``pipesim record``: record what a server of pipesim's protocol broadcasts, as a client.

Connects to ``ws://HOST:PORT/ws`` (a real orchestrator, or ``pipesim serve``), optionally watching only
some sessions (``?session_id=``), and writes the same JSON Lines recording as ``pipesim serve --record``
(:class:`~pipesim.live.recording.Recorder`): a header line, then one flushed line per message, with
``wall`` the seconds since the recording started at which the message was *received*, and ``t`` the
message's own ``timestamp``. ``pipesim replay FILE`` serves it, and ``pipesim fit FILE`` reads its
per-stage timings.

* **Reconnects** when the connection drops, after ``backoff_s x 2^(n-1)`` seconds (capped at
  ``max_backoff_s``, with full jitter so that many recorders do not come back at once), up to
  ``retries`` failed attempts in a row; a successful connection resets the count.
* **No duplicates, nothing replay would refuse.** The server's snapshot on reconnect repeats the last
  ``seq`` of each session: a message whose ``seq`` is not above the last recorded for its session is
  left out, as the protocol lets a client do. A message that is not a server message of the protocol is
  left out and counted. ``t`` never goes backwards (a server that restarts its clock would make the file
  unplayable): a message whose timestamp is missing or earlier than the last one's gets the last ``t``
  plus the wall time elapsed since.
* **Whole on SIGINT**: every line is written and flushed in one go, so the file always ends with a
  complete line.
* The first connection must succeed: a bad URL, a refused connection or a refused handshake is one
  :class:`~pipesim.errors.RecordError` naming the URL and the reason (``pipesim record`` prints it, exit 2).

>>> recorder = RecordingClient("ws://127.0.0.1:8001/ws", "out/rec.jsonl", session_ids=["abc"])
>>> recorder.url
'ws://127.0.0.1:8001/ws?session_id=abc'
>>> RecordingClient("http://127.0.0.1:8001/ws", "out/rec.jsonl")
Traceback (most recent call last):
...
pipesim.errors.RecordError: http://127.0.0.1:8001/ws: not a WebSocket URL (expected ws://HOST:PORT/ws or wss://...)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from pipesim import _jsonsafe
from pipesim.errors import ProtocolError, RecordError
from pipesim.live.client import split_websocket_url
from pipesim.live.recording import Recorder
from pipesim.protocol import parse_message
from pipesim.vocabulary import SERVER_MESSAGE_TYPES


@dataclass
class RecordStats:
    """What a recording session did."""

    #: Messages written to the file.
    messages: int = 0
    #: Successful connections (1 + reconnections).
    connections: int = 0
    #: Repeated messages left out (the snapshots sent on reconnect).
    duplicates: int = 0
    #: Frames that were not server messages of the protocol, left out.
    skipped: int = 0
    #: Why each connection ended, in order.
    drops: list[str] = field(default_factory=list)


class RecordingClient:
    """Records ``url``'s broadcast to ``out`` (see the module's docstring); :meth:`run` until ``stop`` is set.

    ``token`` is sent as ``Authorization: Bearer TOKEN``. ``say`` receives one human-readable line per
    event (connected, dropped, reconnecting); ``rng`` draws the jitter.
    """

    def __init__(self, url: str, out: str | Path, session_ids: Iterable[str] = (), *, token: str | None = None,
                 retries: int = 10, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 open_timeout_s: float = 10.0, say: Callable[[str], None] | None = None,
                 rng: random.Random | None = None) -> None:
        parts = split_websocket_url(url, RecordError)
        if retries < 0 or not backoff_s > 0 or not max_backoff_s >= backoff_s:
            raise ValueError("need retries >= 0 and 0 < backoff_s <= max_backoff_s")
        self.source = url
        self.session_ids = list(session_ids)
        query = urlencode([("session_id", s) for s in self.session_ids])
        self.url = f"{url}{'&' if parts.query else '?'}{query}" if query else url
        self.out = Path(out)
        self.token = token
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.open_timeout_s = open_timeout_s
        self.stats = RecordStats()
        self._say = say or (lambda line: None)
        self._rng = rng or random.Random()
        self._last_seq: dict[str, int] = {}
        self._last_t: float | None = None
        self._last_wall = 0.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnection attempt ``attempt`` (1, 2, ...): full jitter under the cap.

        >>> client = RecordingClient("ws://h:1/ws", "r.jsonl", backoff_s=0.5, max_backoff_s=4, rng=random.Random(0))
        >>> all(0 <= client.backoff(n) <= min(4, 0.5 * 2 ** (n - 1)) for n in range(1, 20))
        True
        """
        return self._rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))

    async def run(self, stop: asyncio.Event | None = None) -> RecordStats:
        """Record until ``stop`` is set (then return) or the server is gone for good (then raise).

        Raises :class:`~pipesim.errors.RecordError` if the first connection fails, or if ``retries``
        reconnection attempts in a row fail; the file holds everything received until then.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        ws = await self._connect()  # before the file is created: a typo in the URL leaves no empty recording
        try:
            recorder = Recorder(self.out, {"recorded_from": self.source, "session_ids": self.session_ids})
        except OSError as exc:
            await ws.close()
            raise RecordError(f"cannot write the recording {self.out}: {exc.strerror}") from None
        origin = loop.time()
        try:
            while True:
                reason = await self._receive(ws, recorder, origin, stop)
                if stop.is_set():
                    return self.stats
                self.stats.drops.append(reason)
                ws = await self._reconnect(reason, stop)
                if ws is None:
                    return self.stats
        finally:
            recorder.close()

    # Connecting --------------------------------------------------------------------------------------
    async def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout_s,
                               max_size=None)
        except InvalidURI as exc:
            raise RecordError(f"{self.source}: not a valid WebSocket URL ({exc.msg})") from None
        except InvalidStatus as exc:
            body = (exc.response.body or b"").decode("utf-8", "replace").strip()
            raise RecordError(f"{self.source}: the server refused the connection: HTTP "
                              f"{exc.response.status_code}{f' ({body})' if body else ''}") from None
        except InvalidHandshake as exc:
            raise RecordError(f"{self.source}: not a WebSocket server ({exc})") from None
        except TimeoutError:
            raise RecordError(f"{self.source}: no answer within {self.open_timeout_s:g} s") from None
        except OSError as exc:
            # asyncio puts the address into strerror; the errno's own text is the clear part. A name that
            # does not resolve (gaierror) has an errno of getaddrinfo's, which only strerror names.
            reason = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
            raise RecordError(f"cannot connect to {self.source}: {reason}") from None
        self.stats.connections += 1
        self._say(f"connected to {self.url}")
        return ws

    async def _reconnect(self, reason: str, stop: asyncio.Event) -> ClientConnection | None:
        for attempt in range(1, self.retries + 1):
            delay = self.backoff(attempt)
            self._say(f"connection lost ({reason}); reconnecting in {delay:.1f} s "
                      f"(attempt {attempt} of {self.retries})")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return None
            try:
                return await self._connect()
            except RecordError as exc:
                reason = str(exc)
        raise RecordError(f"{self.source}: gave up after {self.retries} reconnection attempts ({reason}); "
                          f"recorded {self.stats.messages} messages to {self.out}")

    # Receiving ---------------------------------------------------------------------------------------
    async def _receive(self, ws: ClientConnection, recorder: Recorder, origin: float, stop: asyncio.Event) -> str:
        """Record ``ws``'s messages until it closes (the reason, returned) or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(ws.recv())
                await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await receiving
                    await ws.close()
                    return "stopped"
                try:
                    raw = receiving.result()
                except ConnectionClosed as exc:
                    return _close_reason(exc)
                self._record(raw, loop.time() - origin, recorder)
        finally:
            stopping.cancel()

    def _record(self, raw: str | bytes, wall: float, recorder: Recorder) -> None:
        try:
            parse_message(raw, allowed=SERVER_MESSAGE_TYPES)
        except ProtocolError:
            self.stats.skipped += 1
            return
        message: dict[str, Any] = _jsonsafe.loads(raw)
        sid, seq = message.get("session_id"), message.get("seq")
        if isinstance(sid, str) and isinstance(seq, int):
            if message["type"] == "session_created":
                self._last_seq.pop(sid, None)  # the id is used again (a looping replay): a new session
            if seq <= self._last_seq.get(sid, -1):
                self.stats.duplicates += 1
                return
            self._last_seq[sid] = seq
        stamp = message.get("timestamp")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp) and (
                self._last_t is None or stamp >= self._last_t):
            t = float(stamp)
        else:  # no usable timestamp, or the server's clock went back: keep the file's time moving forward
            t = (self._last_t or 0.0) + (wall - self._last_wall)
        self._last_t, self._last_wall = t, wall
        recorder.write(wall, t, message)
        self.stats.messages += 1


def _close_reason(exc: ConnectionClosed) -> str:
    close = exc.rcvd or exc.sent
    if close is None:
        return "closed without a close frame"
    return f"code {close.code}{f': {close.reason}' if close.reason else ''}"


# The command line ---------------------------------------------------------------------------------------
def record(args: argparse.Namespace) -> int:
    """``pipesim record URL --out FILE [--session-id ID ...] [--retries N] [--max-backoff S] [--token]``."""
    def say(line: str) -> None:
        print(f"pipesim: {line}", file=sys.stderr, flush=True)

    client = RecordingClient(args.url, args.out, args.session_id, retries=args.retries,
                             max_backoff_s=args.max_backoff, say=say,
                             token=args.token or os.environ.get("PIPESIM_TOKEN") or None)
    stats = asyncio.run(_record_until_signal(client))
    say(f"stopped; recorded {stats.messages} messages to {client.out} ({stats.connections} connection(s), "
        f"{stats.duplicates} repeated and {stats.skipped} non-protocol messages left out)")
    return 0


async def _record_until_signal(client: RecordingClient) -> RecordStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises instead
            loop.add_signal_handler(sig, stop.set)
    try:
        return await client.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

