"""The WebSocket dialects a live server speaks beside the seed's ``/ws``, and the one list that registers them.

A dialect is handed the server's :class:`~pipesim.live.hub.Hub` (the way out to its sockets, the
slow-client rule, shutdown and the ``disconnect`` fault) and its :class:`~pipesim.live.source.LiveModel`
(what its sockets drive; :meth:`~pipesim.live.source.LiveModel.on_reset` and ``on_forget`` say when the
sessions go). It never sees the server. Its handshake passes the same access checks as ``/ws``.

To add one: a class with ``serve(ws)`` whose constructor takes ``(hub, model)``, and one line in
:data:`DIALECTS`.

>>> sorted(DIALECTS)
['/rtvi']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.server import ServerConnection

from pipesim.live.connection import RTVI_PATH
from pipesim.live.hub import Hub
from pipesim.live.rtvi import RtviDialect
from pipesim.live.source import LiveModel


class Dialect(Protocol):
    """One dialect of one server: serves each of its connections until it closes."""

    async def serve(self, ws: ServerConnection) -> None: ...


#: Path -> the dialect's constructor, made once per server at the first connection to that path.
DIALECTS: dict[str, Callable[[Hub, LiveModel], Dialect]] = {
    RTVI_PATH: RtviDialect,
}
