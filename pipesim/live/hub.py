"""The hub: every open connection of a live or replay server, who watches what, and the way out to them.

One place for the outbound policy: publish a message to the watchers of a session (serialised once,
written straight to the sockets that keep up, at the end of the current step), send to one client,
the slow-client rule (a client ``client_queue`` messages behind is dropped with 1013), attach, detach,
drop and close a client, and the tasks a close spawns. The journal and the recorder are taps on what
is published. The dialects (``/ws``, ``/rtvi``) and the admin API are handed the hub; it knows
nothing of them, of the model or of HTTP.

>>> hub = Hub()
>>> len(hub.clients), hub.slow_disconnects
(0, 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from pipesim.live.connection import CLOSE_FAULT, CLOSE_GOING_AWAY, CLOSE_SLOW, Client, InboundHook, handle_now
from pipesim.live.journal import Journal
from pipesim.live.recording import Recorder
from pipesim.protocol import dumps

log = logging.getLogger("pipesim.live")


class Binary(bytes):
    """A binary frame among the text frames (their UTF-8) waiting for :meth:`Hub.flush`."""


class Hub:
    """The connections and the outbound path (see the module's docstring).

    ``journal_t`` gives the simulated time an entry made now carries (the clock of whatever serves the
    messages); ``send_buffer`` bounds each socket's kernel send buffer (None: the OS default).
    """

    def __init__(self, *, client_queue: int = 1000, close_timeout: float = 2.0,
                 send_buffer: int | None = 128 * 1024, journal: Journal | None = None,
                 journal_t: Callable[[], float] = lambda: 0.0) -> None:
        if client_queue < 1:
            raise ValueError(f"client_queue must be >= 1, got {client_queue}")
        self.client_queue = client_queue
        self.close_timeout = close_timeout
        self.send_buffer = send_buffer
        #: Every inbound and outbound message (None: no journal): a tap on what goes through the hub.
        self.journal = journal
        self.journal_t = journal_t
        #: The recording of what is published (set while the server runs with ``record``): a tap.
        self.recorder: Recorder | None = None
        #: Every message a dialect has parsed goes through it (the stubs replace it: :mod:`pipesim.live.stubs`).
        self.inbound: InboundHook = handle_now
        #: Clients disconnected for being too slow, since the start.
        self.slow_disconnects = 0
        #: Every open connection, whatever it speaks (shutdown and the ``disconnect`` fault reach them all).
        self.clients: set[Client] = set()
        # Who gets a message about a session: the unfiltered clients, and the watchers of that session
        # (indexed, so a publish costs O(its recipients), not O(clients)).
        self._watch_all: set[Client] = set()
        self._watchers: dict[str, set[Client]] = {}
        # Messages on their way straight to a socket, written at the end of the current step (flush).
        self._pending: dict[Client, list[bytes]] = {}  # text frames' UTF-8, and Binary frames
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop``; the recording's wall clock starts now."""
        self._loop = loop
        self._t0 = loop.time()

    @property
    def watched_sessions(self) -> set[str]:
        """The sessions some filtered client watches now (an index entry each)."""
        return set(self._watchers)

    @property
    def unfiltered(self) -> int:
        """Clients that watch every session."""
        return len(self._watch_all)

    # Publish -----------------------------------------------------------------------------------------
    def publish(self, session_id: str | None, message: dict[str, Any], t: float) -> None:
        """Send one message about ``session_id`` to every client watching it, and record it.

        (A message about no session, a recorded ``error`` in a replay, goes to the unfiltered clients.)"""
        self.publish_text(session_id, dumps(message), t)  # serialised once, whatever the number of clients

    def publish_text(self, session_id: str | None, text: str, t: float) -> None:
        """:meth:`publish` of a message already serialised."""
        if self.journal is not None:
            self.journal.outbound_text(session_id, text, t)
        if self.recorder is not None:
            assert self._loop is not None
            self.recorder.write(self._loop.time() - self._t0, t, text)
        watchers = self._watchers.get(session_id) if session_id is not None else None
        data: bytes | None = None
        pending = self._pending
        # Copies: an offer may drop a slow client, which changes these sets.
        for client in (*self._watch_all, *watchers) if watchers else tuple(self._watch_all):
            if client in pending or self._writable(client):
                # Straight to the socket, without waking a writer task per client and message (what the
                # profile showed to dominate): collected, then written with one system call per client
                # at the end of this step (see flush).
                if data is None:
                    data = text.encode()
                pending.setdefault(client, []).append(data)
            else:
                self.offer(client, text)
        if pending and self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def session_ended(self, session_id: str, t: float, seq: int, reason: str) -> None:
        """Publish ``session_ended`` for a session that vanished without its own (a reset, a replay's seek)."""
        self.publish(session_id, {"type": "session_ended", "session_id": session_id, "timestamp": t,
                                  "seq": seq, "reason": reason}, t)

    @staticmethod
    def _writable(client: Client) -> bool:
        """Whether a message may go straight to the socket: nothing queued before it (order), and the
        transport below its high-water mark, where ``send`` would wait (else the message waits in the
        queue, which measures how far behind the client is). The writer task writes a message the moment
        it takes it from the queue, so an empty queue means that nothing of this client's is waiting."""
        ws = client.ws
        return (not client.closing and client.queue.empty() and ws.state is State.OPEN
                and ws.transport.get_write_buffer_size() < ws.transport.get_write_buffer_limits()[1])

    def flush(self, only: Client | None = None) -> None:
        """Write the collected messages: all of them, or ``only`` that client's (before anything else of
        its goes through the queue, to keep the order)."""
        if only is not None:
            batches = {only: self._pending.pop(only)} if only in self._pending else {}
        else:
            self._flush_handle = None
            batches, self._pending = self._pending, {}
        for client, frames in batches.items():
            ws = client.ws
            if client.closing or ws.state is not State.OPEN:
                continue  # as a send would: nothing more reaches a closing connection
            try:
                for frame in frames:
                    if type(frame) is Binary:
                        ws.protocol.send_binary(frame)
                    else:
                        ws.protocol.send_text(frame)
                # The frames, compressed for this connection, in one write (one system call).
                ws.transport.writelines(ws.protocol.data_to_send())
            except Exception as exc:  # a broken connection: its handler sees it close
                log.debug("writing to %s failed: %s", client.name, exc)

    # One client --------------------------------------------------------------------------------------
    def push(self, client: Client, frame: bytes) -> None:
        """Send one binary frame to one client as :meth:`publish` sends a message: straight to its socket with
        this step's other writes while it keeps up, else through its queue (the slow-client rule). For frames
        many a second per client (the bot's audio), where a writer task woken per frame is what costs."""
        if client.closing:
            return
        if client in self._pending or self._writable(client):
            self._pending.setdefault(client, []).append(Binary(frame))
            if self._flush_handle is None and self._loop is not None:
                self._flush_handle = self._loop.call_soon(self.flush)
        else:
            self.offer(client, frame)

    def send(self, client: Client, message: dict[str, Any] | BaseModel) -> None:
        """Send one message to one client (journaled; an ``error`` also becomes its inbound's result)."""
        if self.journal is not None:
            data = message.model_dump(mode="json") if isinstance(message, BaseModel) else message
            self.journal.outbound(client.id, data, self.journal_t())
            if data.get("type") == "error" and client.inbound is not None:
                client.inbound["result"] = {"error": {"code": data["code"], "message": data["message"]}}
        self.offer(client, dumps(message))

    def error(self, client: Client, code: str, message: str, session_id: str | None = None) -> None:
        """Send the protocol's ``error`` to one client."""
        self.send(client, {"type": "error", "code": code, "message": message, "session_id": session_id})

    def offer(self, client: Client, text: str | bytes) -> None:
        """Queue a frame for ``client``'s writer; one ``client_queue`` frames behind is dropped (1013)."""
        if client.closing:
            return
        if client in self._pending:
            self.flush(only=client)
        if client.queue.qsize() >= self.client_queue:
            self.slow_disconnects += 1
            log.warning("client %s is %d messages behind: disconnecting it", client.name,
                        client.queue.qsize())
            self.drop(client, CLOSE_SLOW, f"too slow: {client.queue.qsize()} messages queued")
            return
        client.queue.put_nowait(text)

    def attach(self, client: Client, first: Iterable[str] = ()) -> None:
        """Into the hub: ``first`` queued (a snapshot), then every message about what the client watches
        (no await in between: nothing can fall between the two), and its writer started."""
        self._limit_send_buffer(client)
        for text in first:
            client.queue.put_nowait(text)
        self.clients.add(client)
        if client.watch_all:
            self._watch_all.add(client)
        for sid in client.watched:
            self.watch(client, sid)
        client.writer = asyncio.ensure_future(self._writer(client))

    def watch(self, client: Client, session_id: str) -> None:
        """``client`` watches ``session_id`` from now on (by its filter or by a control)."""
        client.watched.add(session_id)
        if not client.closing and not client.watch_all:  # (an unfiltered client gets it already)
            self._watchers.setdefault(session_id, set()).add(client)

    def unwatch(self, client: Client, session_id: str) -> None:
        client.watched.discard(session_id)
        self._unindex(client, session_id)

    def _unindex(self, client: Client, session_id: str) -> None:
        watchers = self._watchers.get(session_id)
        if watchers is not None:
            watchers.discard(client)
            if not watchers:
                del self._watchers[session_id]

    def detach(self, client: Client) -> None:
        """No more messages for this client: out of the hub, its writer stopped."""
        client.closing = True
        self._pending.pop(client, None)
        self.clients.discard(client)
        self._watch_all.discard(client)
        for sid in client.watched:
            self._unindex(client, sid)
        if client.writer is not None:
            client.writer.cancel()
            client.writer = None  # the task's frame holds the client: no cycle left for the collector

    async def serve(self, client: Client, on_frame: Callable[[bytes], None], on_bug: Callable[[Exception], None],
                    *, first: Iterable[str] = (), on_attach: Callable[[], None] = lambda: None,
                    journal_view: Callable[[bytes], dict[str, Any] | None] | None = None,
                    session_of: Callable[[], str | None] = lambda: None) -> None:
        """Run one connection of any dialect until it closes: :meth:`attach` it (``first`` queued, then
        ``on_attach()``), hand each inbound frame to ``on_frame``, :meth:`detach` it. With ``journal_view``
        (and a journal), each frame is journaled first, as ``journal_view(frame)`` (None: not journaled, e.g.
        audio), about ``session_of()`` (None: the session the message names), and the ``error`` it causes
        becomes its result. An exception from ``on_frame`` is a pipesim bug: logged, told to the client by
        ``on_bug(exc)``, and the connection and the server carry on."""
        self.attach(client, first)
        on_attach()
        try:
            while True:
                raw = await client.ws.recv(decode=False)
                if journal_view is not None and self.journal is not None:
                    view = journal_view(raw)
                    if view is not None:
                        client.inbound = self.journal.inbound(client.id, view, self.journal_t(), session_of())
                try:
                    on_frame(raw)
                except Exception as exc:  # a pipesim bug: say so, keep the connection and the server
                    log.exception("handling a frame from %s failed", client.name)
                    on_bug(exc)
                finally:
                    if client.inbound is not None:
                        if client.inbound["result"] is None:
                            client.inbound["result"] = "applied"
                        client.inbound = None
        except ConnectionClosed:
            pass
        finally:
            self.detach(client)

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Disconnect a client without waiting for it (callable from the pacer's callbacks)."""
        if client.closing:
            return
        self.detach(client)
        self.spawn(self.close(client, code, reason))

    def disconnect(self, session_id: str | None) -> int:
        """The ``disconnect`` fault: close (4000) every connection that watches ``session_id`` by its
        filter or by a control (None: every connection); how many."""
        targets = [c for c in self.clients if session_id is None or session_id in c.watched]
        log.info("fault injection: disconnecting %d client(s) watching %s", len(targets), session_id or "anything")
        for target in targets:
            self.drop(target, CLOSE_FAULT, "fault injection: disconnect")
        return len(targets)

    def close_when_drained(self, client: Client, code: int, reason: str, timeout: float = 1.0) -> None:
        """Close ``client`` once what is queued for it is written (at most ``timeout`` s from now)."""
        async def close() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await client.queue.join()
            self.drop(client, code, reason)

        self.spawn(close())

    async def close(self, client: Client, code: int, reason: str) -> None:
        self.detach(client)
        try:
            # close() waits for the peer's close frame, and first for room in the write buffer, which a
            # client that does not read never makes: bound it and abort the TCP connection after that.
            async with asyncio.timeout(self.close_timeout):
                await client.ws.close(code, reason)
        except TimeoutError:
            client.ws.transport.abort()
        except Exception:  # a connection that breaks while closing is closed all the same
            client.ws.transport.abort()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the hub keeps (and cancels at shutdown)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, drain: float = 1.0) -> None:
        """Give what is queued up to ``drain`` s to reach the clients, then close them all with 1001."""
        self.flush()
        clients = list(self.clients)
        # Bounded: a slow client must not hold us up.
        drains = [asyncio.ensure_future(c.queue.join()) for c in clients if not c.closing]
        if drains:
            _, pending = await asyncio.wait(drains, timeout=drain)
            for task in pending:
                task.cancel()
        await asyncio.gather(*(self.close(c, CLOSE_GOING_AWAY, "server shutting down") for c in clients))

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _limit_send_buffer(self, client: Client) -> None:
        # The kernel grows a socket's send buffer to megabytes on its own; a client that stopped reading
        # would then be thousands of messages behind before its queue even starts to fill. A bounded
        # buffer keeps "client_queue messages behind" close to the truth (and is plenty for a dashboard).
        sock = client.ws.transport.get_extra_info("socket")
        if self.send_buffer is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    @staticmethod
    async def _writer(client: Client) -> None:
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
            # Unblock shutdown's queue.join() for whatever will never be sent now.
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()
