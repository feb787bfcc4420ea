"""The live mock backend: the production orchestrator's WebSocket protocol, served by the real model.

:class:`~pipesim.live.liveserver.LiveServer` runs the same :class:`~pipesim.model.Simulation` as an offline
run, stepped in real time by a :class:`~pipesim.live.pacer.Pacer`; every state-manager transition becomes
the wire messages of :func:`pipesim.protocol.wire_messages`, broadcast to the clients that watch its session.
:class:`~pipesim.live.replay.ReplayServer` plays a recording or a trace over the same protocol.

Endpoints (HTTP and WebSocket share the port)
---------------------------------------------
* ``ws://HOST:PORT/ws`` -- the protocol. ``GET /`` -- the dashboard page (``pipesim/live/static/``);
  ``GET /static/NAME`` -- its files; ``GET /healthz`` -- ``200 ok``; ``GET /stats`` -- JSON counters (clients,
  sessions, the clock's origin, the pacer's lag histogram); anything else -- ``404``. Any
  path is answered, whatever its length or characters (``NAME`` is looked up among the files that exist,
  never handed to the file system); a request line that is not ASCII is not HTTP, and the websockets
  library hangs up on it.
* ``ws://HOST:PORT/rtvi`` -- (the live server only) Pipecat's RTVI for ``@pipecat-ai/client-js``: one
  socket, one session (:mod:`pipesim.live.rtvi`). The access checks below apply to it as to ``/ws``.

Admin API
---------
With ``admin_port`` (``pipesim serve`` by default: 8002), :mod:`pipesim.live.admin` serves
``http://127.0.0.1:PORT/__admin`` (always loopback) from the same event loop: sessions, the clock, faults,
push, the journal (:attr:`BaseServer.journal`: every inbound frame with its result, every outbound
message) and reset.

TLS
---
With ``tls`` (``--tls-cert``/``--tls-key`` or ``--tls-self-signed``: :mod:`pipesim.live.tls`), every endpoint
is served over TLS with the same certificate: ``wss://`` for ``/ws`` and ``/rtvi``, ``https://`` for the
dashboard, ``/healthz``, ``/stats`` and the admin API; :attr:`~BaseServer.url`, ``http_url`` and
``admin_url`` say so. The checks below are unchanged (a page's ``Origin`` is then ``https://...``). A plain
``ws://`` or ``http://`` client is refused by the TLS handshake (its connection is closed); the server
carries on.

Who may connect
---------------
Checked at the ``/ws`` (and ``/rtvi``) handshake by :mod:`pipesim.live.access`; a refusal is ``403``
with a one-line reason.

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
* Slow clients: a message goes straight to a client's socket while nothing of its is queued and the
  socket keeps up; otherwise into the client's own outbound queue (1000 messages by default), drained by
  its own writer task. Each socket has a send buffer bounded to 128 KiB (the kernel may double it), so
  that the queue measures how far behind the client really is. When a client falls that far behind, it is disconnected
  with code 1013 (try again later) and reason ``"too slow: ..."``; if it does not complete the close
  handshake within 2 s, its TCP connection is aborted (what was still buffered for it is lost). The
  pacer and the other clients never wait for a slow client.
* :meth:`stop` (SIGINT/SIGTERM in ``pipesim serve``) stops the clock, gives queued messages up to 1 s to
  drain, closes every client with code 1001 (going away) and closes the recording.
* Memory: a stopped session is forgotten ``forget_after`` simulated seconds after it stopped
  (``--forget-after``, default 60; None: never): the model and the state manager drop it, it no longer
  gets snapshots, controls name it ``unknown_session``, and ``start`` is still refused (a stopped id is
  never reused; the ids of forgotten client-created sessions are kept for that, a few dozen bytes each).
* Memory: the model's trace (``LiveServer.sim.trace``) keeps the most recent ``trace_limit`` events and
  service samples and a sixteenth as many turns (default 200,000, some 25 MB; ``None`` keeps everything;
  ``trace.dropped`` counts what it forgot), so it stays bounded however long the server runs.

Replay
------
``pipesim replay FILE`` (:class:`~pipesim.live.replay.ReplayServer`) plays a recording or a trace: playback starts
when the first client connects, from the first message, at the original simulated timing divided by ``speed``;
``--loop`` starts again after the last message (the same session ids are created again). Watching rules,
snapshots (the last update of each session not yet ended), limits and ``disconnect`` work as live;
controls and model faults get ``error`` ``unsupported``. :meth:`~pipesim.live.replay.ReplayServer.pause`, ``resume``,
``set_speed`` and ``seek`` (the admin API's replay clock) move its :class:`~pipesim.live.playback.Playback`
cursor; a seek brings every watcher to the state as of ``t``, as a client joining then would see it.

>>> from pipesim.scenario import Scenario
>>> from pipesim.live import LiveServer
>>> server = LiveServer(Scenario(), port=0)  # in a coroutine: await server.start() ... await server.stop()
>>> server.host
'127.0.0.1'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from pipesim.errors import LiveError
from pipesim.live.access import Access, RedactingLogger
from pipesim.live.clock import Clock
from pipesim.live.collector import ServingCollector
from pipesim.live.connection import CLOSE_GOING_AWAY, UNCOMPRESSED_PATHS, Client, free_protocol
from pipesim.live.hub import Hub
from pipesim.live.journal import Journal
from pipesim.live.options import ServerOptions
from pipesim.live.recording import Recorder
from pipesim.live.routes import STATIC_DIR, answer, handshake_refusal
from pipesim.live.source import DEFAULT_TRACE_LIMIT, LiveModel
from pipesim.live.ws import WsDialect
from pipesim.protocol import (
    MAX_MESSAGE_BYTES,
    ConversationControl,
    FaultInjection,
)

if TYPE_CHECKING:
    from pipesim.live.admin import AdminListener

__all__ = ["DEFAULT_TRACE_LIMIT", "MAX_FRAME_BYTES", "BaseServer"]  # (the live server: pipesim.live.liveserver)

log = logging.getLogger("pipesim.live")

#: Frames above this are refused by the websockets library itself (close code 1009); between
#: MAX_MESSAGE_BYTES and this, pipesim answers ``too_large`` and keeps the connection.
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_BYTES


class BaseServer:
    """Connections, routing, broadcast, recording and shutdown; the subclasses bring the messages."""

    #: What serves the messages: a model in real time, or a replay of a recording (the admin API asks).
    kind: ClassVar[Literal["live", "replay"]]
    #: Its :class:`~pipesim.live.clock.Clock`, as the admin API drives it (the pacer's or the playback's).
    timekeeper: Clock
    #: The live model (None: a replay, of :attr:`source`).
    model: LiveModel | None = None
    #: What a replay plays (None: a live model).
    source: str | None = None

    def __init__(self, options: ServerOptions | None = None, /, **keywords: Any) -> None:
        #: Where it listens, who may connect, ...: ``options`` with ``keywords`` laid over them.
        self.options = opts = ServerOptions.of(options, keywords, type(self).__name__)
        self.host, self.port = opts.host, opts.port
        #: The TLS context of every endpoint (None: plain ``ws://`` and ``http://``); see :mod:`pipesim.live.tls`.
        self.ssl_context = opts.tls.server_context() if opts.tls is not None else None
        #: The handshake checks: Origin allowlist, Host check, token (see :mod:`pipesim.live.access`).
        self.access = Access.build(opts.host, opts.allow_origins, opts.allow_hosts, opts.token)
        #: WebSocket handshakes refused by :attr:`access`, since the start.
        self.refused = 0
        self.record_path = Path(opts.record) if opts.record is not None else None
        self.close_timeout = opts.close_timeout
        self.static_dir = Path(opts.static_dir) if opts.static_dir is not None else STATIC_DIR
        self.recorder: Recorder | None = None
        #: The process's garbage collector when this server's process owns it (``pipesim serve``): in /stats.
        self.collector: ServingCollector | None = None
        self._server: Server | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Every inbound and outbound message (bounded; None when ``journal_size`` is 0): see the admin API.
        self.journal: Journal | None = Journal(opts.journal_size) if opts.journal_size > 0 else None
        #: The connections and the way out to them (publish, send, the slow-client rule, close).
        self.hub = Hub(client_queue=opts.client_queue, close_timeout=opts.close_timeout, send_buffer=opts.send_buffer,
                       journal=self.journal, journal_t=lambda: self._journal_t())
        #: The seed's protocol on ``/ws``: what a client watches, its controls and faults (this server's hooks).
        self.ws = WsDialect(self.hub, snapshot=self._snapshot, on_control=self._on_control,
                            on_fault=self._on_fault, on_connect=self._on_connect)
        #: The admin API's listener (``admin_port`` None: no admin API).
        self.admin: AdminListener | None = None
        if opts.admin_port is not None:
            from pipesim.live.admin import AdminListener  # FastAPI loads only when it is wanted

            self.admin = AdminListener(self, opts.admin_port, opts.admin_token, tls=opts.tls)

    # Public API ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The WebSocket URL (``ws://host:port/ws``; ``wss://`` with TLS)."""
        return f"{'wss' if self.ssl_context else 'ws'}://{self._display_host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The dashboard page's URL (``http://host:port/``; ``https://`` with TLS)."""
        return f"{'https' if self.ssl_context else 'http'}://{self._display_host}:{self.port}/"

    @property
    def admin_url(self) -> str | None:
        """The admin API's base URL (``http://127.0.0.1:PORT/__admin``, ``https://`` with TLS), or None."""
        return self.admin.url if self.admin is not None else None

    @property
    def clients(self) -> int:
        """Connected WebSocket clients."""
        return len(self.hub.clients)

    @property
    def slow_disconnects(self) -> int:
        """Clients disconnected for being too slow, since the start."""
        return self.hub.slow_disconnects

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop it runs on (None before :meth:`start`)."""
        return self._loop

    @property
    def running(self) -> bool:
        return self._server is not None and not self._stopping

    async def start(self) -> None:
        """Open the recording, listen (``port=0`` picks a free port, then in :attr:`port`) and start."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._loop = asyncio.get_running_loop()
        self.hub.start(self._loop)
        self._stopped = asyncio.Event()
        if self.record_path is not None:
            try:
                self.recorder = self.hub.recorder = Recorder(self.record_path, self._record_header())
            except OSError as exc:
                raise LiveError(f"cannot write the recording {self.record_path}: {exc.strerror}") from None
        token = self.access.token
        if self.admin is not None:
            try:
                self.admin.bind()  # before the WebSocket port: a busy admin port must not leave a half server
            except LiveError:
                if self.recorder is not None:
                    self.recorder.close()
                raise
        try:
            self._server = await serve(
                self._handler, self.host, self.port, process_request=self._process_request,
                max_size=MAX_FRAME_BYTES, close_timeout=self.close_timeout, server_header="pipesim",
                ssl=self.ssl_context,
                # The library logs request lines and headers at DEBUG level: keep the token out of them.
                logger=RedactingLogger(logging.getLogger("websockets.server"), token) if token else None)
        except OSError as exc:
            if self.recorder is not None:
                self.recorder.close()
            if self.admin is not None:
                await self.admin.stop()
            if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's, which os.strerror cannot name
                reason = f"{exc.strerror} (--host must be a name or address of this machine)"
            else:  # asyncio puts the address into strerror; the errno's own text is the clear part
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise LiveError(f"cannot listen on {self.host}:{self.port}: {reason}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._on_start()
        if self.admin is not None:
            await self.admin.start()
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
            if self.admin is not None:
                await self.admin.stop()
            await self._on_stop()
            await self.hub.shutdown()
            # Anything that connected meanwhile, or is mid-handshake, gets the same treatment.
            self._server.close(close_connections=True, code=CLOSE_GOING_AWAY, reason="server shutting down")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout + 1.0):
                    await self._server.wait_closed()
            self.hub.cancel_tasks()
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

    def _on_connect(self, client: Client) -> None:
        pass

    def _snapshot(self, client: Client) -> list[dict[str, Any]]:
        return []

    def _journal_t(self) -> float:
        """The simulated time the journal gives an entry made now."""
        return 0.0

    def _stats(self) -> dict[str, Any]:
        """``GET /stats``: counters for load tests and monitoring."""
        gc = self.collector.as_dict() if self.collector is not None and self.collector.running else None
        return {"kind": self.kind, "clients": len(self.hub.clients), "slow_disconnects": self.hub.slow_disconnects,
                "refused": self.refused, "gc": gc}

    def _on_control(self, client: Client, msg: ConversationControl) -> None:
        raise NotImplementedError

    def _on_fault(self, client: Client, msg: FaultInjection) -> None:
        raise NotImplementedError

    @property
    def dialect_paths(self) -> tuple[str, ...]:
        """The paths of the dialects served beside ``/ws`` (their handshakes pass the same checks)."""
        return ()

    async def _serve_dialect(self, path: str, ws: ServerConnection) -> None:
        raise NotImplementedError

    # Connections -----------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        path = target.path
        if path == "/ws" or path in self.dialect_paths:
            refusal = handshake_refusal(self.access, request, target.query)
            if refusal is None:
                if path in UNCOMPRESSED_PATHS:
                    connection.protocol.available_extensions = None
                return None  # the WebSocket handshake goes on
            self.refused += 1
            host, port = (connection.remote_address or ("?", 0))[:2]
            log.warning("refused a WebSocket connection from %s:%s: %s", host, port, refusal)
            return connection.respond(403, f"{refusal}\n")
        return answer(connection, path, self.static_dir, self._stats)

    async def _handler(self, ws: ServerConnection) -> None:
        if self._stopping:
            await ws.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        assert ws.request is not None
        path = urlsplit(ws.request.path).path
        if path in self.dialect_paths:
            await self._serve_dialect(path, ws)
            await free_protocol(ws)
            return
        await self.ws.serve(ws)
        await free_protocol(ws)

    def disconnect_fault(self, client: Client, msg: FaultInjection, known: Callable[[str], bool]) -> None:
        """The ``disconnect`` fault of ``/ws``: see :meth:`WsDialect.disconnect_fault`."""
        self.ws.disconnect_fault(client, msg, known)

    @property
    def _display_host(self) -> str:
        # A wildcard address is not one a client can connect to: show the loopback one instead.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._stopping else "not started"
        return f"<{type(self).__name__} {self.url} {state}, {self.clients} client(s)>"


_S = TypeVar("_S", bound=BaseServer)
