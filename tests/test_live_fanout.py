"""The hub's fan-out: what is published reaches every watcher, byte for byte and in order, whether it went
straight to the socket or, for a watcher that fell behind, through its queue."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from conftest import run, talking_scenario
from websockets.asyncio.client import ClientConnection, connect

from pipesim.live import LiveClient, LiveServer

SESSIONS = [f"fan-{i}" for i in range(12)]


async def _read_until_ended(ws: ClientConnection, into: list[bytes]) -> None:
    """Every frame's payload, until each of :data:`SESSIONS` has ended."""
    ended = 0
    while ended < len(SESSIONS):
        raw = await ws.recv(decode=False)
        into.append(raw)
        ended += b'"type":"session_ended"' in raw


def _recorded(path: Path) -> list[bytes]:
    """The wire text of each recorded message (a recording line splices it in as it was sent)."""
    lines = path.read_bytes().splitlines()[1:]
    return [line[line.index(b'"message":') + len(b'"message":'):-1] for line in lines]


def test_every_watcher_gets_every_published_byte_in_order_one_that_fell_behind_and_caught_up_included(
        tmp_path: Path) -> None:
    record = tmp_path / "fanout.jsonl"

    async def main() -> None:
        # Nobody talks before the watchers are in (so each one's story starts at the same message); a small
        # send buffer and a client that reads nothing for a while put that one behind, into its queue.
        async with LiveServer(talking_scenario(0, name="fanout", seed=3), port=0, speed=50, record=record,
                              client_queue=100_000, send_buffer=4096) as server:
            watchers = [await connect(server.url, max_size=None) for _ in range(3)]
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            behind = await connect(server.url, sock=sock, max_size=None, max_queue=1)
            received: list[list[bytes]] = [[] for _ in range(len(watchers) + 1)]
            readers = [asyncio.ensure_future(_read_until_ended(ws, got)) for ws, got in zip(watchers, received[:-1],
                                                                                                strict=True)]
            async with LiveClient(server.url, session_id=SESSIONS) as control:
                for sid in SESSIONS:
                    await control.control("start", sid)
                queued = 0
                while queued < 200:  # the lagging watcher's messages now wait in its queue
                    await asyncio.sleep(0.01)
                    queued = max([queued] + [c.queue.qsize() for c in server.hub.clients])
                catching_up = asyncio.ensure_future(_read_until_ended(behind, received[-1]))
                await asyncio.sleep(0.3)
                for sid in SESSIONS:
                    await control.control("stop", sid)
                await asyncio.gather(*readers, catching_up)
            assert server.slow_disconnects == 0
            for ws in (*watchers, behind):
                await ws.close()
        assert len(received[0]) > 1000
        assert all(got == received[0] for got in received[1:])
        assert received[0] == _recorded(record)

    run(main())
