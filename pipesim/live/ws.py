"""The seed's protocol on ``/ws``: one connection's watching filter, its snapshot, its inbound messages
(parsed, journaled, answered ``error`` when bad) and the ``disconnect`` fault. What a control or a model
fault does is the source's (the live model's server, or the replay): handed in as hooks.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from pipesim import _jsonsafe
from pipesim.live.connection import Client
from pipesim.live.hub import Hub
from pipesim.protocol import MAX_MESSAGE_BYTES, ConversationControl, FaultInjection, ProtocolError, dumps, parse_message
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES

log = logging.getLogger("pipesim.live")


class WsDialect:
    """``/ws`` of one server: ``snapshot(client)`` gives what a new client gets first, ``on_control`` and
    ``on_fault`` apply a message, ``on_connect`` hears of each new client."""

    def __init__(self, hub: Hub, *, snapshot: Callable[[Client], list[dict[str, Any]]],
                 on_control: Callable[[Client, ConversationControl], None],
                 on_fault: Callable[[Client, FaultInjection], None],
                 on_connect: Callable[[Client], None] = lambda client: None) -> None:
        self.hub = hub
        self._snapshot, self._on_control, self._on_fault, self._on_connect = snapshot, on_control, on_fault, on_connect
        self._connections = itertools.count(1)

    async def serve(self, ws: ServerConnection) -> None:
        """Run one ``/ws`` connection until it closes."""
        assert ws.request is not None
        wanted = [sid for sid in parse_qs(urlsplit(ws.request.path).query).get("session_id", []) if sid]
        client = Client(ws, watch_all=not wanted, watched=set(wanted), id=f"c{next(self._connections)}")
        log.info("client %s connected (%s)", client.name, "all sessions" if client.watch_all else
                 ", ".join(repr(sid) for sid in sorted(client.watched)))  # repr: ids may hold newlines
        try:
            await self.hub.serve(client, lambda raw: self._on_message(client, raw),
                                 lambda exc: self.hub.error(client, "unsupported", f"internal error: {exc}"),
                                 first=[dumps(message) for message in self._snapshot(client)],
                                 on_attach=lambda: self._on_connect(client), journal_view=_journal_view)
        finally:
            log.info("client %s disconnected", client.name)

    def _on_message(self, client: Client, raw: bytes) -> None:
        if len(raw) > MAX_MESSAGE_BYTES:
            self.hub.error(client, "too_large", f"message is {len(raw)} bytes, the limit is {MAX_MESSAGE_BYTES}")
            return
        try:
            msg = parse_message(raw, allowed=CLIENT_MESSAGE_TYPES)
        except ProtocolError as exc:
            self.hub.error(client, "bad_message", str(exc))
            return
        if isinstance(msg, ConversationControl):
            self._on_control(client, msg)
        elif isinstance(msg, FaultInjection):
            self._on_fault(client, msg)

    def disconnect_fault(self, client: Client, msg: FaultInjection, known: Callable[[str], bool]) -> None:
        """The ``disconnect`` fault: close (4000) the connections that watch ``msg.session_id`` by name (by its
        filter or a control; None: every connection); ``known(session_id)`` says whether the session exists."""
        sid = msg.session_id
        if sid is not None and not known(sid):
            self.hub.error(client, "unknown_session", f"disconnect: unknown session {sid!r}", sid)
            return
        self.hub.disconnect(sid)


def _journal_view(raw: bytes) -> dict[str, Any]:
    """An inbound frame as the journal shows it: its JSON object, else ``{"raw": ...}`` (cut)."""
    if len(raw) <= MAX_MESSAGE_BYTES:
        with contextlib.suppress(ValueError, RecursionError):
            data = _jsonsafe.loads(raw.decode("utf-8"))
            if isinstance(data, dict):
                return data
    return {"raw": raw[:200].decode("utf-8", "replace")}
