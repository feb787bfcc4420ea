"""One client connection of a live or replay server: what it watches, its outbound queue, its journal id.

Shared by :mod:`pipesim.live.server`, which keeps one per WebSocket, and the dialects it serves
(:mod:`pipesim.live.rtvi`), which build on it; so that neither imports the other's module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection

#: Pipecat's RTVI dialect (:mod:`pipesim.live.rtvi`), served by the live server beside ``/ws``.
RTVI_PATH = "/rtvi"


@dataclass(eq=False)
class Client:
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
    #: The connection's id in the journal (``c1``, ``c2``, ... in order of connection).
    id: str = ""
    #: The journal entry of the inbound message being handled (its result is filled in by _send).
    inbound: dict[str, Any] | None = None

    def wants(self, session_id: str | None) -> bool:
        return self.watch_all or session_id in self.watched

    @property
    def name(self) -> str:
        host, port = (self.ws.remote_address or ("?", 0))[:2]
        return f"{host}:{port}"
