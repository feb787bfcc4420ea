"""The live mock backend: the production orchestrator's WebSocket protocol, served by the real model.

:class:`LiveServer` runs the same :class:`~pipesim.model.Simulation` as an offline run, stepped in real
time by a :class:`~pipesim.live.pacer.Pacer`; every state-manager transition becomes the wire messages of
:func:`pipesim.protocol.wire_messages`, broadcast to the clients that watch its session.
:class:`ReplayServer` plays a recording or a trace over the same protocol.

Endpoints (HTTP and WebSocket share the port)
---------------------------------------------
* ``ws://HOST:PORT/ws`` -- the protocol. ``GET /`` -- the dashboard page (``pipesim/live/static/``);
  ``GET /static/NAME`` -- its files; ``GET /healthz`` -- ``200 ok``; anything else -- ``404``. Any
  path is answered, whatever its length or characters (``NAME`` is looked up among the files that exist,
  never handed to the file system); a request line that is not ASCII is not HTTP, and the websockets
  library hangs up on it.

Who may connect
---------------
Checked at the ``/ws`` handshake by :mod:`pipesim.live.access`; a refusal is ``403`` with a one-line reason.

* ``Origin``: none (a program) or a page of ``http(s)://`` ``localhost``/``127.0.0.1``/``[::1]`` on any
  port, or of the server's own origin; more with ``allow_origins`` (``--allow-origin``; ``"*"``: any).
* ``Host``: a loopback name or address or the bound ``host`` (no DNS rebinding); more with
  ``allow_hosts`` (``--allow-host``; ``"*"``: any).
* ``token`` (``--token``, ``$PIPESIM_TOKEN``): required as ``Authorization: Bearer TOKEN`` or
  ``?token=TOKEN`` (the dashboard page passes on the ``token`` of its own URL); compared in constant
  time, never logged (the library's DEBUG lines show ``***``) nor echoed. Listening beyond loopback
  without a token logs a warning.

Watching rules
--------------
* ``/ws`` (no ``session_id``) watches every session: the dashboard view.
* ``/ws?session_id=abc`` watches only session ``abc`` (repeat the parameter to watch several). Any
  number of clients may watch the same session; each receives the same messages in the same order.
* A client also watches every session it has controlled successfully (``start``, ``pause``, ``stop``),
  whatever its filter: a client that starts ``abc`` sees ``abc``'s ``session_created`` and everything after.
* Sequence numbers: every message about a session has its own ``seq``, one more than the one before:
  ``session_created`` is 0, every ``pipeline_state_update`` the next, ``session_ended`` the last. So a
  client may drop any message whose ``seq`` is not greater than the last it has for the session.
* On connect, the server first sends one ``pipeline_state_update`` with ``event: "snapshot"`` for each
  watched session that exists and is not stopped; its ``seq`` repeats that of the last message sent
  about the session (the next real message follows it by one), then every message as it happens.
* ``error`` messages go only to the client whose message caused them; nothing else changes.
* Sessions outlive connections: a client that disconnects leaves its sessions running (reconnect with
  ``?session_id=`` to pick them up again); only ``stop`` ends a session. A stopped session id cannot be
  started again.

Controls and faults
-------------------
* ``conversation_control``: ``start`` creates a session from the scenario's session template (or
  resumes a paused one); ``pause`` freezes it (no updates until ``start``); ``stop`` ends it with a last
  update (``status: "stopped"``) and ``session_ended``. An unknown session gets ``error``
  ``unknown_session``; a control that does not fit the session's state gets ``illegal_control``, and so
  does ``start`` with an id the scenario will create itself (its scripted ids, ``PREFIX-NNNNN``).
* Who may control what: by default any client may control any session, another client's and the
  scenario's own included (a mock backend for testing frontends). With ``owner_only`` (``--owner-only``)
  a connection may control only the sessions it created with ``start``, on that same connection
  (ownership is not carried over a reconnect: there is no client identity to key it by); anything else
  gets ``error`` ``forbidden`` naming the session. Faults are not restricted.
* ``fault_injection`` ``kafka_stall`` (optional ``service``: one topic, else all) and
  ``service_outage`` (``service`` required) act on the shared model from now for ``duration_s`` simulated
  seconds; ``session_id`` is ignored for them (Kafka and the services are shared, as in production).
  ``disconnect`` closes, with code 4000 and reason ``"fault injection: disconnect"``, every connection
  that watches ``session_id`` by its filter or by a control (not the unfiltered ones that merely see it);
  without ``session_id`` it closes every connection. The session itself keeps running, so a client can
  test its reconnect logic. A fault that succeeds is not acknowledged (the protocol has no message for
  that; its effects show in the updates); one that cannot be applied gets ``error``.

Limits
------
* Every inbound message is parsed with :func:`pipesim.protocol.parse_message`; a bad one gets
  exactly one ``error`` ``bad_message`` saying what is wrong (values cut to 80 characters), and the
  connection carries on: text or binary frames, invalid UTF-8, any JSON (huge integers, deep nesting,
  NaN, lone surrogates), a wrong type in any field (``tests/test_live_fuzz.py``).
* A message over :data:`~pipesim.protocol.MAX_MESSAGE_BYTES` (64 KiB) gets ``error`` ``too_large`` and
  the connection carries on. Above ``4 x MAX_MESSAGE_BYTES`` (256 KiB) the WebSocket library closes the
  connection with code 1009 (message too big) before pipesim sees the message.
* Slow clients: each client has its own outbound queue (1000 messages by default), drained by its own
  writer task, and a socket send buffer bounded to 128 KiB (the kernel may double it) so that the queue
  measures how far behind the client really is. When a client falls that far behind, it is disconnected
  with code 1013 (try again later) and reason ``"too slow: ..."``; if it does not complete the close
  handshake within 2 s, its TCP connection is aborted (what was still buffered for it is lost). The
  pacer and the other clients never wait for a slow client.
* :meth:`stop` (SIGINT/SIGTERM in ``pipesim serve``) stops the clock, gives queued messages up to 1 s to
  drain, closes every client with code 1001 (going away) and closes the recording.
* Memory: the model's trace (``LiveServer.sim.trace``) keeps the most recent ``trace_limit`` events and
  service samples and a sixteenth as many turns (default 200,000, some 25 MB; ``None`` keeps everything;
  ``trace.dropped`` counts what it forgot), so it stays bounded however long the server runs.

Replay
------
``pipesim replay FILE`` (:class:`ReplayServer`) plays a recording or a trace: playback starts when the
first client connects, from the first message, at the original simulated timing divided by ``speed``;
``--loop`` starts again after the last message (the same session ids are created again). Watching rules,
snapshots (the last update of each session not yet ended), limits and ``disconnect`` work as live;
controls and model faults get ``error`` ``unsupported``.

>>> from pipesim.scenario import Scenario
>>> server = LiveServer(Scenario(), port=0)  # in a coroutine: await server.start() ... await server.stop()
>>> server.host
'127.0.0.1'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipesim.errors import LiveError
from pipesim.live.access import Access, RedactingLogger
from pipesim.live.pacer import Pacer
from pipesim.live.recording import Recorder, load_replay
from pipesim.model import Simulation
from pipesim.protocol import (
    MAX_MESSAGE_BYTES,
    ConversationControl,
    FaultInjection,
    ProtocolError,
    dumps,
    parse_message,
    wire_messages,
)
from pipesim.scenario import Scenario, as_scenario
from pipesim.state import IllegalTransition, Transition, UnknownSession
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES

log = logging.getLogger("pipesim.live")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Frames above this are refused by the websockets library itself (close code 1009); between
#: MAX_MESSAGE_BYTES and this, pipesim answers ``too_large`` and keeps the connection.
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_BYTES
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_FAULT = 4000
#: Events (and service samples; a sixteenth as many turns) a live server's trace keeps by default: a ring, so
#: that memory stays bounded however long it runs (~60 bytes an event in the trace).
DEFAULT_TRACE_LIMIT = 200_000
_FALLBACK_PAGE = """<!doctype html><meta charset="utf-8"><title>pipesim</title>
<h1>pipesim live server</h1>
<p>The dashboard page is not installed (<code>pipesim/live/static/index.html</code>).
Connect a WebSocket client to <code>/ws</code> (all sessions) or <code>/ws?session_id=ID</code>.</p>
"""


@dataclass(eq=False)
class _Client:
    """One WebSocket connection: what it watches and its outbound queue."""

    ws: ServerConnection
    watch_all: bool
    #: Sessions named by the ``session_id`` filter or by a successful control.
    watched: set[str]
    #: Sessions this connection created with ``start`` (what it may control under ``owner_only``).
    owned: set[str] = field(default_factory=set)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    closing: bool = False

    def wants(self, session_id: str | None) -> bool:
        return self.watch_all or session_id in self.watched

    @property
    def name(self) -> str:
        host, port = (self.ws.remote_address or ("?", 0))[:2]
        return f"{host}:{port}"


class _BaseServer:
    """Connections, routing, broadcast, recording and shutdown; the subclasses bring the messages."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8001, record: str | Path | None = None,
                 client_queue: int = 1000, close_timeout: float = 2.0, send_buffer: int | None = 128 * 1024,
                 static_dir: str | Path | None = None, allow_origins: Iterable[str] = (),
                 allow_hosts: Iterable[str] = (), token: str | None = None) -> None:
        if client_queue < 1:
            raise ValueError(f"client_queue must be >= 1, got {client_queue}")
        self.host, self.port = host, port
        #: The handshake checks: Origin allowlist, Host check, token (see :mod:`pipesim.live.access`).
        self.access = Access.build(host, allow_origins, allow_hosts, token)
        #: WebSocket handshakes refused by :attr:`access`, since the start.
        self.refused = 0
        self.record_path = Path(record) if record is not None else None
        self.client_queue = client_queue
        self.close_timeout = close_timeout
        self.send_buffer = send_buffer
        self.static_dir = Path(static_dir) if static_dir is not None else STATIC_DIR
        #: Clients disconnected for being too slow, since the start.
        self.slow_disconnects = 0
        self.recorder: Recorder | None = None
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0

    # Public API ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The WebSocket URL (``ws://host:port/ws``)."""
        return f"ws://{self._display_host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The dashboard page's URL."""
        return f"http://{self._display_host}:{self.port}/"

    @property
    def clients(self) -> int:
        """Connected WebSocket clients."""
        return len(self._clients)

    @property
    def running(self) -> bool:
        return self._server is not None and not self._stopping

    async def start(self) -> None:
        """Open the recording, listen (``port=0`` picks a free port, then in :attr:`port`) and start."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._stopped = asyncio.Event()
        if self.record_path is not None:
            try:
                self.recorder = Recorder(self.record_path, self._record_header())
            except OSError as exc:
                raise LiveError(f"cannot write the recording {self.record_path}: {exc.strerror}") from None
        token = self.access.token
        try:
            self._server = await serve(
                self._handler, self.host, self.port, process_request=self._process_request,
                max_size=MAX_FRAME_BYTES, close_timeout=self.close_timeout, server_header="pipesim",
                # The library logs request lines and headers at DEBUG level: keep the token out of them.
                logger=RedactingLogger(logging.getLogger("websockets.server"), token) if token else None)
        except OSError as exc:
            if self.recorder is not None:
                self.recorder.close()
            if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's, which os.strerror cannot name
                reason = f"{exc.strerror} (--host must be a name or address of this machine)"
            else:  # asyncio puts the address into strerror; the errno's own text is the clear part
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise LiveError(f"cannot listen on {self.host}:{self.port}: {reason}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._on_start()
        log.info("serving on %s", self.url)
        if self.access.exposed and token is None:
            log.warning("listening on %s, beyond this machine, without a token: anyone who can reach it "
                        "can control sessions (set --token or PIPESIM_TOKEN)", self.host or "every address")

    async def stop(self) -> None:
        """Stop the clock, drain queues briefly, close every client with 1001 and the recording."""
        if self._server is None or self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._on_stop()
            clients = list(self._clients)
            # Let what is already queued reach the clients (bounded: a slow client must not hold us up).
            drains = [asyncio.ensure_future(c.queue.join()) for c in clients if not c.closing]
            if drains:
                _, pending = await asyncio.wait(drains, timeout=1.0)
                for task in pending:
                    task.cancel()
            await asyncio.gather(*(self._close(c, CLOSE_GOING_AWAY, "server shutting down") for c in clients))
            # Anything that connected meanwhile, or is mid-handshake, gets the same treatment.
            self._server.close(close_connections=True, code=CLOSE_GOING_AWAY, reason="server shutting down")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout + 1.0):
                    await self._server.wait_closed()
            for task in list(self._tasks):
                task.cancel()
        finally:
            if self.recorder is not None:
                self.recorder.close()
            assert self._stopped is not None
            self._stopped.set()
            log.info("stopped")

    async def wait_stopped(self) -> None:
        """Wait until :meth:`stop` has finished."""
        if self._stopped is None:
            raise RuntimeError("the server is not started")
        await self._stopped.wait()

    async def __aenter__(self: _S) -> _S:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Hooks for the subclasses ------------------------------------------------------------------------
    def _record_header(self) -> dict[str, Any]:
        return {}

    def _on_start(self) -> None:
        pass

    async def _on_stop(self) -> None:
        pass

    def _on_connect(self, client: _Client) -> None:
        pass

    def _snapshot(self, client: _Client) -> list[dict[str, Any]]:
        return []

    def _on_control(self, client: _Client, msg: ConversationControl) -> None:
        raise NotImplementedError

    def _on_fault(self, client: _Client, msg: FaultInjection) -> None:
        raise NotImplementedError

    # Broadcast -------------------------------------------------------------------------------------
    def _broadcast(self, session_id: str | None, message: dict[str, Any], t: float) -> None:
        """Send one message about ``session_id`` to every client watching it, and record it.

        (A message about no session, a recorded ``error`` in a replay, goes to the unfiltered clients.)"""
        text = dumps(message)  # serialised once, whatever the number of clients
        if self.recorder is not None:
            assert self._loop is not None
            self.recorder.write(self._loop.time() - self._t0, t, text)
        for client in list(self._clients):
            if client.wants(session_id):
                self._offer(client, text)

    def _send(self, client: _Client, message: dict[str, Any] | BaseModel) -> None:
        self._offer(client, dumps(message))

    def _error(self, client: _Client, code: str, message: str, session_id: str | None = None) -> None:
        self._send(client, {"type": "error", "code": code, "message": message, "session_id": session_id})

    def _offer(self, client: _Client, text: str) -> None:
        if client.closing:
            return
        if client.queue.qsize() >= self.client_queue:
            self.slow_disconnects += 1
            log.warning("client %s is %d messages behind: disconnecting it", client.name,
                        client.queue.qsize())
            self._drop(client, CLOSE_SLOW, f"too slow: {client.queue.qsize()} messages queued")
            return
        client.queue.put_nowait(text)

    def _detach(self, client: _Client) -> None:
        """No more messages for this client: out of the broadcast, its writer stopped."""
        client.closing = True
        self._clients.discard(client)
        if client.writer is not None:
            client.writer.cancel()

    def _drop(self, client: _Client, code: int, reason: str) -> None:
        """Disconnect a client without waiting for it (callable from the pacer's callbacks)."""
        if client.closing:
            return
        self._detach(client)
        task = asyncio.ensure_future(self._close(client, code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, client: _Client, code: int, reason: str) -> None:
        self._detach(client)
        try:
            # close() waits for the peer's close frame, and first for room in the write buffer, which a
            # client that does not read never makes: bound it and abort the TCP connection after that.
            async with asyncio.timeout(self.close_timeout):
                await client.ws.close(code, reason)
        except TimeoutError:
            client.ws.transport.abort()
        except Exception:  # a connection that breaks while closing is closed all the same
            client.ws.transport.abort()

    async def _writer(self, client: _Client) -> None:
        ws, queue = client.ws, client.queue
        try:
            while True:
                text = await queue.get()
                try:
                    await ws.send(text)
                finally:
                    queue.task_done()
        except ConnectionClosed:
            pass
        finally:
            # Unblock stop()'s queue.join() for whatever will never be sent now.
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()

    # Connections -----------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        path = target.path
        if path == "/ws":
            refusal = self._refusal(request, target.query)
            if refusal is None:
                return None  # the WebSocket handshake goes on
            self.refused += 1
            host, port = (connection.remote_address or ("?", 0))[:2]
            log.warning("refused a WebSocket connection from %s:%s: %s", host, port, refusal)
            return connection.respond(403, f"{refusal}\n")
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path in ("/", "/index.html"):
            page = self.static_dir / "index.html"
            if page.is_file():
                return self._file_response(connection, page)
            return self._text_response(connection, 200, _FALLBACK_PAGE, "text/html; charset=utf-8")
        if path.startswith("/static/"):
            # Look the name up among the files that exist rather than handing it to the file system: no
            # name (too long, NUL, ../, undecodable) can then fail or escape.
            target = self._static_files().get(path.removeprefix("/static/"))
            if target is not None:
                return self._file_response(connection, target)
        return connection.respond(404, "not found\n")

    def _static_files(self) -> dict[str, Path]:
        """The dashboard's files by their name under ``/static/`` (a handful: listed on every request)."""
        base = self.static_dir
        return {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()} if base.is_dir() else {}

    def _refusal(self, request: Request, query: str) -> str | None:
        headers: dict[str, str] = {}
        for name in ("Host", "Origin", "Authorization"):
            values = request.headers.get_all(name)
            if len(values) > 1:
                return f"more than one {name} header"
            if values:
                headers[name] = values[0]
        return self.access.refusal(headers, parse_qs(query))

    @staticmethod
    def _text_response(connection: ServerConnection, status: int, body: str | bytes,
                       content_type: str) -> Response:
        response = connection.respond(status, "")
        data = body.encode() if isinstance(body, str) else body
        response.body = data
        # Headers are multi-valued: setting appends, so delete the plain-text defaults first.
        for name, value in (("Content-Length", str(len(data))), ("Content-Type", content_type)):
            del response.headers[name]
            response.headers[name] = value
        return response

    def _file_response(self, connection: ServerConnection, path: Path) -> Response:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
            content_type += "; charset=utf-8"
        response = self._text_response(connection, 200, path.read_bytes(), content_type)
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _handler(self, ws: ServerConnection) -> None:
        if self._stopping:
            await ws.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        assert ws.request is not None
        wanted = [sid for sid in parse_qs(urlsplit(ws.request.path).query).get("session_id", []) if sid]
        client = _Client(ws, watch_all=not wanted, watched=set(wanted))
        self._limit_send_buffer(ws)
        # Snapshot and registration with no await in between: no transition can fall between the two.
        for message in self._snapshot(client):
            client.queue.put_nowait(dumps(message))
        self._clients.add(client)
        client.writer = asyncio.ensure_future(self._writer(client))
        log.info("client %s connected (%s)", client.name, "all sessions" if client.watch_all else
                 ", ".join(repr(sid) for sid in sorted(client.watched)))  # repr: ids may hold newlines
        self._on_connect(client)
        try:
            while True:
                raw = await ws.recv(decode=False)
                self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._detach(client)
            log.info("client %s disconnected", client.name)

    def _limit_send_buffer(self, ws: ServerConnection) -> None:
        # The kernel grows a socket's send buffer to megabytes on its own; a client that stopped reading
        # would then be thousands of messages behind before its queue even starts to fill. A bounded
        # buffer keeps "client_queue messages behind" close to the truth (and is plenty for a dashboard).
        sock = ws.transport.get_extra_info("socket")
        if self.send_buffer is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    def _on_message(self, client: _Client, raw: bytes) -> None:
        if len(raw) > MAX_MESSAGE_BYTES:
            self._error(client, "too_large", f"message is {len(raw)} bytes, the limit is {MAX_MESSAGE_BYTES}")
            return
        try:
            msg = parse_message(raw, allowed=CLIENT_MESSAGE_TYPES)
        except ProtocolError as exc:
            self._error(client, "bad_message", str(exc))
            return
        try:
            if isinstance(msg, ConversationControl):
                self._on_control(client, msg)
            elif isinstance(msg, FaultInjection):
                self._on_fault(client, msg)
        except Exception as exc:  # a pipesim bug: say so to the client, keep everything else running
            log.exception("handling %r failed", msg)
            self._error(client, "unsupported", f"internal error handling {getattr(msg, 'type', msg)}: {exc}")

    def _disconnect(self, client: _Client, msg: FaultInjection, known: Callable[[str], bool]) -> None:
        """The ``disconnect`` fault: close the connections that watch ``msg.session_id`` by name."""
        sid = msg.session_id
        if sid is not None and not known(sid):
            self._error(client, "unknown_session", f"disconnect: unknown session {sid!r}", sid)
            return
        targets = [c for c in self._clients if sid is None or sid in c.watched]
        log.info("fault injection: disconnecting %d client(s) watching %s", len(targets), sid or "anything")
        for target in targets:
            self._drop(target, CLOSE_FAULT, "fault injection: disconnect")

    @property
    def _display_host(self) -> str:
        # A wildcard address is not one a client can connect to: show the loopback one instead.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._stopping else "not started"
        return f"<{type(self).__name__} {self.url} {state}, {self.clients} client(s)>"


_S = TypeVar("_S", bound=_BaseServer)


class LiveServer(_BaseServer):
    """The live mock backend: the scenario's model in real time, over the orchestrator's protocol.

    ``speed`` is simulated seconds per wall second; ``record`` a JSON Lines file of every message
    broadcast; ``client_queue`` the slow-client limit (messages); ``send_buffer`` each client's socket
    send buffer (bytes; None leaves the OS default); ``allow_origins``, ``allow_hosts`` and ``token`` who
    may connect (see "Who may connect" above); ``owner_only`` lets a connection control only the sessions
    it started. The scenario's own sessions (arrivals, scripted ones) run as they would offline; clients
    add sessions with ``start``. ``port=0`` picks a free port.

    >>> import asyncio
    >>> from pipesim.scenario import Scenario
    >>> quiet = Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 0}}})
    >>> async def demo():
    ...     async with LiveServer(quiet, port=0, speed=10) as server:
    ...         return server.url.startswith("ws://127.0.0.1:")
    >>> asyncio.run(demo())
    True
    """

    def __init__(self, scenario: Scenario | str | Path | dict[str, Any], *, seed: int | None = None,
                 speed: float = 1.0, host: str = "127.0.0.1", port: int = 8001,
                 record: str | Path | None = None, client_queue: int = 1000, close_timeout: float = 2.0,
                 send_buffer: int | None = 128 * 1024, static_dir: str | Path | None = None,
                 allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = (), token: str | None = None,
                 owner_only: bool = False, trace_limit: int | None = DEFAULT_TRACE_LIMIT) -> None:
        super().__init__(host=host, port=port, record=record, client_queue=client_queue,
                         close_timeout=close_timeout, send_buffer=send_buffer, static_dir=static_dir,
                         allow_origins=allow_origins, allow_hosts=allow_hosts, token=token)
        #: Clients may control only the sessions they started on the same connection.
        self.owner_only = owner_only
        self.scenario = as_scenario(scenario)
        #: The one model; its ``trace`` keeps the most recent ``trace_limit`` events (None: everything).
        self.sim = Simulation(self.scenario, seed=seed, live=True, trace_limit=trace_limit)
        self.pacer = Pacer(self.sim.env, speed)
        self._unsubscribe: Callable[[], None] | None = None
        self._pacer_task: asyncio.Task[None] | None = None

    @property
    def speed(self) -> float:
        return self.pacer.speed

    def _record_header(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "seed": self.sim.seed, "speed": self.pacer.speed}

    def _on_start(self) -> None:
        self._unsubscribe = self.sim.manager.subscribe(self._on_transition)
        self.sim.start()  # the scenario's arrivals and scripted sessions, at simulated time 0
        self._pacer_task = asyncio.ensure_future(self.pacer.run())

    async def _on_stop(self) -> None:
        if self._pacer_task is not None:
            self._pacer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer_task
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _on_transition(self, tr: Transition) -> None:
        for message in wire_messages(tr):
            self._broadcast(tr.session_id, message, tr.t)

    def _snapshot(self, client: _Client) -> list[dict[str, Any]]:
        mgr = self.sim.manager
        now = self.pacer.catch_up()
        out = []
        for sid in mgr.session_ids:
            if client.wants(sid) and mgr.status(sid) != "stopped":
                out.append(wire_messages(mgr.snapshot(sid, now))[0])
        return out

    def _on_control(self, client: _Client, msg: ConversationControl) -> None:
        self.pacer.catch_up()
        sid = msg.session_id
        exists = sid in self.sim.manager
        if self.owner_only and exists and sid not in client.owned:
            self._error(client, "forbidden", f"{msg.action}: session {sid!r} was not started by this "
                        "connection (the server lets a connection control only the sessions it started)", sid)
            return
        added = sid not in client.watched
        # Watch before applying, so that the control's own transitions reach this client.
        client.watched.add(sid)
        try:
            self.sim.control(sid, msg.action)
        except UnknownSession:
            self._error(client, "unknown_session",
                        f"{msg.action}: unknown session {sid!r} (send start to create it)", sid)
        except IllegalTransition as exc:
            self._error(client, "illegal_control", f"{msg.action}: {exc}", sid)
        else:
            added = False
            if not exists:
                client.owned.add(sid)
        finally:
            if added:
                client.watched.discard(sid)
        self.pacer.wake()  # the control may have scheduled events sooner than the pacer's next one

    def _on_fault(self, client: _Client, msg: FaultInjection) -> None:
        if msg.fault == "disconnect":
            self._disconnect(client, msg, lambda sid: sid in self.sim.manager)
            return
        self.pacer.catch_up()
        try:
            self.sim.inject_fault(msg.fault, msg.service, msg.duration_s)
        except ValueError as exc:
            self._error(client, "bad_message", f"fault_injection: {exc}", msg.session_id)
            return
        log.info("fault injection: %s %s for %.1f s at t=%.3f", msg.fault, msg.service or "all topics",
                 msg.duration_s, self.sim.env.now)
        self.pacer.wake()


class ReplayServer(_BaseServer):
    """Serves a recording or a trace over the live protocol, at its original timing divided by ``speed``.

    ``source`` is a file (see :func:`~pipesim.live.recording.load_replay`) or ``(t, message)`` pairs.
    Playback starts when the first client connects, from the first message (so nobody misses the
    beginning); ``loop=True`` starts again after the last one. Controls and model faults are answered with
    ``error`` ``unsupported`` (a replay cannot change); ``disconnect`` works as live.

    >>> server = ReplayServer([(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0,
    ...                                 "seq": 0})], port=0)
    >>> server.messages
    1
    """

    def __init__(self, source: str | Path | Iterable[tuple[float, dict[str, Any]]], *, speed: float = 1.0,
                 loop: bool = False, host: str = "127.0.0.1", port: int = 8001,
                 record: str | Path | None = None, client_queue: int = 1000, close_timeout: float = 2.0,
                 send_buffer: int | None = 128 * 1024, static_dir: str | Path | None = None,
                 allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = (),
                 token: str | None = None) -> None:
        super().__init__(host=host, port=port, record=record, client_queue=client_queue,
                         close_timeout=close_timeout, send_buffer=send_buffer, static_dir=static_dir,
                         allow_origins=allow_origins, allow_hosts=allow_hosts, token=token)
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.source = str(source) if isinstance(source, str | Path) else "<messages>"
        self._items = load_replay(source) if isinstance(source, str | Path) else list(source)
        if not self._items:
            raise ValueError("nothing to replay")
        self.speed, self.loop = float(speed), loop
        #: Times the playback reached its end.
        self.plays = 0
        self._player: asyncio.Task[None] | None = None
        self._latest: dict[str, dict[str, Any]] = {}  # last update of each session not yet ended
        self._position = self._items[0][0]
        self._finished: asyncio.Event | None = None

    @property
    def messages(self) -> int:
        """How many messages one playback sends."""
        return len(self._items)

    async def wait_finished(self) -> None:
        """Wait until the (first) playback has sent its last message."""
        if self._finished is None:
            raise RuntimeError("the server is not started")
        await self._finished.wait()

    def _record_header(self) -> dict[str, Any]:
        return {"replay_of": self.source, "speed": self.speed}

    def _on_start(self) -> None:
        self._finished = asyncio.Event()

    async def _on_stop(self) -> None:
        if self._player is not None:
            self._player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._player

    def _on_connect(self, client: _Client) -> None:
        if self._player is None:
            self._player = asyncio.ensure_future(self._play())

    def _snapshot(self, client: _Client) -> list[dict[str, Any]]:
        return [{**m, "event": "snapshot", "timestamp": self._position}
                for sid, m in self._latest.items() if client.wants(sid)]

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._latest.clear()
            t_first = self._items[0][0]
            origin = loop.time()
            for i, (t, message) in enumerate(self._items):
                delay = origin + (t - t_first) / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif i % 100 == 99:
                    await asyncio.sleep(0)  # behind: let the writers run
                self._position = t
                sid = message.get("session_id")
                if sid is not None and message["type"] == "pipeline_state_update":
                    self._latest[sid] = message
                elif sid is not None and message["type"] == "session_ended":
                    self._latest.pop(sid, None)
                self._broadcast(sid, message, t)
            self.plays += 1
            assert self._finished is not None
            self._finished.set()
            if not self.loop:
                return

    def _on_control(self, client: _Client, msg: ConversationControl) -> None:
        self._error(client, "unsupported",
                    f"{msg.action}: this server replays {self.source}; controls cannot change it",
                    msg.session_id)

    def _on_fault(self, client: _Client, msg: FaultInjection) -> None:
        if msg.fault == "disconnect":
            known = {m[1].get("session_id") for m in self._items}
            self._disconnect(client, msg, lambda sid: sid in known)
            return
        self._error(client, "unsupported", f"{msg.fault}: this server replays {self.source}; "
                    "only the disconnect fault is available", msg.session_id)


# Notebooks -------------------------------------------------------------------------------------------
_T = TypeVar("_T")


class BackgroundServer(Generic[_S]):
    """A server running in a thread with its own event loop, so it works from Jupyter (whose loop is
    already running) or any synchronous code. Use :func:`serve_in_background` or
    :func:`replay_in_background`; call :meth:`stop` when done (or use it as a context manager).

    Touch the model only through :meth:`call`, which runs a function on the server's loop:
    ``bg.call(lambda: bg.server.sim.trace.events_frame())``.
    """

    def __init__(self, server: _S, timeout: float = 30.0) -> None:
        self.server: _S = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=f"pipesim-{type(server).__name__}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise LiveError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], _T], timeout: float = 10.0) -> _T:
        """Run ``fn()`` on the server's event loop thread and return its result."""
        if self._loop is None or not self.running:
            raise RuntimeError("the server is not running")

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (clients get 1001, the recording is closed) and wait for its thread."""
        if self._loop is not None and self._stop_requested is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop_requested.wait()
        await self.server.stop()

    def __enter__(self) -> BackgroundServer[_S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BackgroundServer {self.server!r}>"

    def _repr_html_(self) -> str:
        s = self.server
        return (f"<b>pipesim {type(s).__name__}</b> on <code>{s.url}</code> "
                f"(dashboard <a href='{s.http_url}' target='_blank'>{s.http_url}</a>), "
                f"{'running' if self.running else 'stopped'}")


def serve_in_background(scenario: Scenario | str | Path | dict[str, Any] = "frontend_demo", *,
                        port: int = 8001, host: str = "127.0.0.1", speed: float = 1.0,
                        seed: int | None = None, record: str | Path | None = None,
                        **kwargs: Any) -> BackgroundServer[LiveServer]:
    """Start a :class:`LiveServer` in a background thread; returns once it listens.

    >>> server = serve_in_background("frontend_demo", port=0)   # doctest: +SKIP
    >>> server.url                                                # doctest: +SKIP
    'ws://127.0.0.1:53211/ws'
    >>> server.stop()                                             # doctest: +SKIP
    """
    return BackgroundServer(LiveServer(scenario, port=port, host=host, speed=speed, seed=seed, record=record,
                                       **kwargs))


def replay_in_background(source: str | Path | Iterable[tuple[float, dict[str, Any]]], *, port: int = 8001,
                         host: str = "127.0.0.1", speed: float = 1.0, loop: bool = False,
                         **kwargs: Any) -> BackgroundServer[ReplayServer]:
    """Start a :class:`ReplayServer` in a background thread; returns once it listens.

    >>> server = replay_in_background("out/trace.jsonl", port=0, speed=5)   # doctest: +SKIP
    """
    return BackgroundServer(ReplayServer(source, port=port, host=host, speed=speed, loop=loop, **kwargs))
