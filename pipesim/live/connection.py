"""One client connection of a live or replay server: what it watches, its outbound queue, its journal id;
the close codes the live package uses, and the clean-up of a closed connection.

Shared by the hub (:mod:`pipesim.live.hub`), which keeps them, and the dialects that make them
(:mod:`pipesim.live.rtvi`, the seed's ``/ws``); so that none imports another's module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection

#: Close codes: a normal end (an RTVI session ended), server shutdown, a slow client, the disconnect fault.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_SLOW = 1013
CLOSE_FAULT = 4000

#: Pipecat's RTVI dialect (:mod:`pipesim.live.rtvi`), served by the live server beside ``/ws``.
RTVI_PATH = "/rtvi"
#: Paths whose handshake declines permessage-deflate (a client's offer is optional, RFC 7692): the RTVI
#: bot's audio is PCM, which deflate shrinks by a third for more CPU than everything else a frame costs.
UNCOMPRESSED_PATHS = frozenset({RTVI_PATH})


@dataclass(eq=False)
class Client:
    """One WebSocket connection: what it watches and its outbound queue."""

    ws: ServerConnection
    watch_all: bool
    #: Sessions named by the ``session_id`` filter or by a successful control.
    watched: set[str]
    #: Sessions this connection created with ``start`` (what it may control under ``owner_only``).
    owned: set[str] = field(default_factory=set)
    queue: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    closing: bool = False
    #: The connection's id in the journal (``c1``, ``c2``, ... in order of connection).
    id: str = ""
    #: The journal entry of the inbound message being handled (its result is filled in by the hub's send).
    inbound: dict[str, Any] | None = None

    def wants(self, session_id: str | None) -> bool:
        return self.watch_all or session_id in self.watched

    @property
    def name(self) -> str:
        host, port = (self.ws.remote_address or ("?", 0))[:2]
        return f"{host}:{port}"


async def free_protocol(ws: ServerConnection) -> None:
    """Once the connection is closed, let reference counting free its protocol.

    websockets (17.x) leaves a closed connection's ``ServerProtocol`` in a reference cycle with its own
    parser generator, and with it the permessage-deflate state: ~80 KB of zlib buffers per connection,
    outside Python's heap, so the serving collector's trigger (Python's heap doubled) never saw them and a
    churn soak's RSS grew without bound. Once the connection is closed nothing steps the parser again, and
    closing it ends the cycle. A connection that ended without a close handshake (a peer that aborted or
    vanished, a close that timed out, a protocol error) keeps the parser's exception in ``parser_exc``, whose
    traceback holds the parse frame and so the protocol: the same cycle, so those tracebacks go too (the
    exceptions stay, for ``close_exc``).
    """
    await ws.wait_closed()
    parser = getattr(ws.protocol, "parser", None)
    if parser is not None and hasattr(parser, "close"):
        parser.close()
    exc, seen = getattr(ws.protocol, "parser_exc", None), set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
