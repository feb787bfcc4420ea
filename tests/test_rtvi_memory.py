"""Churn on ``/rtvi``: what a closed RTVI connection leaves to the cyclic collector, whichever way it ended.

``pipesim serve`` collects cycles rarely (:mod:`pipesim.live.collector`), so whatever a churned connection
leaves in a reference cycle stays until then. With the collector off, a churned RTVI connection (its socket,
its :class:`~pipesim.live.rtvi.RtviConnection`, its session once forgotten) must be freed by reference
counting alone, and the dialect's subscriptions to the model must not grow with the connections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
import weakref
from collections import Counter
from typing import Any

import pytest
from conftest import cyclic_garbage_kinds, run
from test_live_memory import cyclic_collector_off
from test_rtvi import rtvi_url, send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.server import ServerProtocol

from pipesim.live import LiveClient, LiveServer
from pipesim.live.connection import free_protocol
from pipesim.live.rtvi import RtviDialect
from pipesim.live.rtvi_codec import decode_frame
from pipesim.model.simulation import _Session
from pipesim.scenario import Scenario


def model_sessions() -> list[_Session]:
    """The model sessions in memory (reachable or in cycles not yet collected)."""
    return [o for o in gc.get_objects() if type(o) is _Session]


def scenario(turns: int) -> Scenario:
    return Scenario.model_validate({"name": "rtvi-memory-test", "seed": 5, "sessions": {
        "arrivals": {"kind": "at_once", "count": 0}, "turns": turns, "first_speech_delay_s": 0.3,
        "utterance_s": 1.0, "think_time_s": 0.5, "barge_in_probability": 0.0}})


async def until(ws: ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame = decode_frame(await ws.recv())  # type: ignore[arg-type]
        if frame.kind == "audio":  # the bot speaking
            continue
        message = frame.message
        assert message is not None
        if message["type"] == type_:
            return message


async def drain(ws: ClientConnection) -> None:
    """Read until the server closes the socket."""
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()


#: The ways an RTVI connection ends (the server's side: a normal close, a fault, an error, an abort).
WAYS = ("disconnect-bot", "client closes", "session ends", "disconnect fault", "bad frames", "never ready",
        "handler raised", "client aborts", "server aborts")


async def churn_one(server: LiveServer, way: str, freed: list[weakref.ref[Any]]) -> None:
    """One RTVI connection ended ``way``; weak references to the server's objects for it go into ``freed``."""
    url = rtvi_url(server)
    sid = None
    ws = await connect(url, ping_interval=None)
    try:
        async with ws:
            if way == "never ready":
                await send(ws, "client-message", {"t": "early"}, "m")
                await until(ws, "error-response")
            else:
                await send(ws, "client-ready", {"version": "2.1.0"}, "r")
                sid = (await until(ws, "bot-ready"))["data"]["about"]["session_id"]
                conn = server.rtvi.connections[sid]
                freed.append(weakref.ref(conn))
                await send(ws, "client-message", {"t": "ping", "d": 1}, "m")
                await until(ws, "server-response")
                await until(ws, "bot-started-speaking")  # a model event (first_audio) has been delivered
            (client,) = server.hub.clients
            freed += [weakref.ref(client), weakref.ref(client.ws), weakref.ref(client.ws.protocol)]
            del client
            await end(server, ws, way, sid)
    finally:  # the test's client runs in this process: its side of the connection is left out of the count
        await free_protocol(ws)  # type: ignore[arg-type]


async def end(server: LiveServer, ws: ClientConnection, way: str, sid: str | None) -> None:
    if way == "disconnect-bot":
        await send(ws, "disconnect-bot", {}, "d")
        await drain(ws)
    elif way == "session ends":  # the scenario's one turn is over: the session stops, the server closes
        await drain(ws)
    elif way == "disconnect fault":
        async with LiveClient(server.url) as seed:
            await seed.send({"type": "fault_injection", "fault": "disconnect", "session_id": sid})
            await drain(ws)
    elif way == "server aborts":  # a client that stops reading: the close handshake times out, TCP is aborted
        ws.transport.pause_reading()
        async with LiveClient(server.url) as seed:
            await seed.send({"type": "fault_injection", "fault": "disconnect", "session_id": sid})
            while len(server.hub.clients) > 1:
                await asyncio.sleep(0.01)
        ws.transport.abort()
    elif way == "bad frames":
        await ws.send(b"\xff\x00not a pipecat frame")
        await until(ws, "error")
        await ws.send(bytes([0x12, 0x04, 0x1a, 0x02, 0x00, 0x00]))  # microphone audio: counted, dropped
        await send(ws, "no-such-type", {}, "n")
        await until(ws, "error-response")
        await send(ws, "send-text", {"content": 3}, "t")
        await until(ws, "error-response")
        await send(ws, "client-ready", {}, "again")
        await until(ws, "error-response")
    elif way == "handler raised":  # (the test makes send-text's handler raise)
        await send(ws, "send-text", {"content": "boom"}, "b")
        await until(ws, "error")
    elif way == "client aborts":
        ws.transport.abort()
    # "client closes", and the rest: the client closes the socket on leaving ``connect``.


@pytest.mark.parametrize("way", WAYS)
def test_churned_rtvi_connections_are_freed_by_reference_counting_and_leave_only_library_cycles(
        way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # K connections each ended `way`, their sessions stopped and forgotten: with the collector off, every
    # server-side object of theirs is gone, gc.collect() finds nothing of pipesim's, the model's or websockets'
    # (a connection closed without a close handshake left its ServerProtocol, with ~80 KB of zlib state, in a
    # cycle through the parser's EOFError traceback), and the dialect still has one subscription to the
    # state manager and one to the trace's model events (it subscribes once, not per connection). What is
    # left is CPython 3.11's closed socket transports (python/cpython#100348): one per end of each connection.
    churned = 3
    if way == "handler raised":
        def boom(self: RtviDialect, *args: Any) -> None:
            raise RuntimeError("a bug in a handler")

        monkeypatch.setattr(RtviDialect, "_on_send_text", boom)
        # A log record holds its exception's traceback (pytest keeps the records): not this test's subject.
        monkeypatch.setattr(logging.getLogger("pipesim.live"), "propagate", False)  # (the hub logs it)
        monkeypatch.setattr(logging, "lastResort", None)

    async def main() -> tuple[list[Any], int, int, Counter[str], tuple[int, int], int]:
        async with LiveServer(scenario(1 if way == "session ends" else 1000), port=0, speed=40,
                              forget_after=1.0, close_timeout=0.2) as server:
            freed: list[weakref.ref[Any]] = []
            with cyclic_collector_off():
                # (Held, so that their ids stay theirs: an earlier test may leave an "rtvi-1" of its own alive.)
                earlier = model_sessions()
                for _ in range(churned):
                    await churn_one(server, way, freed)
                sessions = churned if way != "never ready" else 0
                while server.clients or server.forgotten < sessions:
                    await asyncio.sleep(0.01)  # forgotten 1 simulated second after the stop: 25 ms at 40x
                # A stopped turn's processes end when their scheduled events come (a TTS playback's end).
                end_of_waits = server.pacer.now() + 30
                while server.pacer.now() < end_of_waits:
                    await asyncio.sleep(0.05)
                # The handlers' and the close tasks end: at once on a quiet machine, later on a loaded one
                # (a fixed 0.1 s failed once beside a parallel test run); what is still alive after 5 s fails.
                settled = time.monotonic() + 5.0
                while time.monotonic() < settled and (any(ref() is not None for ref in freed)
                                                     or server.rtvi.connections):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.1)
                alive = [ref() for ref in freed if ref() is not None]
                protocols = sum(1 for o in gc.get_objects() if type(o) is ServerProtocol)
                subscriptions = (len(server.sim.manager._observers), len(server.sim.trace._model_observers))
                kinds = cyclic_garbage_kinds()
                known = {id(o) for o in earlier}
                left = sum(1 for o in model_sessions() if id(o) not in known)
                return alive, protocols, left, kinds, subscriptions, len(server.rtvi.connections)

    alive, protocols, sessions, kinds, subscriptions, kept = run(main())
    assert alive == [] and protocols == 0 and sessions == 0 and kept == 0
    assert not [kind for kind in kinds if kind.partition(".")[0] in ("pipesim", "simpy", "websockets")], kinds
    # The server's own, the trace's, and the dialect's; the trace's model events: the dialect's only.
    assert subscriptions == (3, 1)
    transports = kinds["asyncio.selector_events._SelectorSocketTransport"]
    connections = churned * (2 if way in ("disconnect fault", "server aborts") else 1)  # a seed client's too
    assert transports <= (0 if sys.version_info >= (3, 12) else 2 * connections), kinds


def test_a_ws_connection_its_client_aborted_is_freed_by_reference_counting() -> None:
    # The seed's /ws goes through the same cleanup (connection.free_protocol) as /rtvi: a client that drops the
    # TCP connection without a close handshake must not leave its ServerProtocol to the cyclic collector.
    async def main() -> list[Any]:
        async with LiveServer(scenario(1000), port=0, speed=40) as server:
            with cyclic_collector_off():
                ws = await connect(f"{server.url}?session_id=x", ping_interval=None)
                while not server.hub.clients:
                    await asyncio.sleep(0.01)
                (client,) = server.hub.clients
                freed = [weakref.ref(client), weakref.ref(client.ws), weakref.ref(client.ws.protocol)]
                del client
                ws.transport.abort()
                await free_protocol(ws)  # type: ignore[arg-type]  # (the test's client side)
                while server.clients:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                return [ref() for ref in freed if ref() is not None]

    assert run(main()) == []


def test_a_stopped_rtvi_session_s_record_does_not_keep_its_closed_socket() -> None:
    # The dialect keeps a closed connection's record (its counters) until its session is forgotten
    # (forget_after, or never); the closed socket, with its permessage-deflate state, is freed at once: a
    # soak that never forgets grew 55 MB per simulated hour on /rtvi, against 16 on /ws, when it was kept.
    async def main() -> tuple[bool, list[Any]]:
        async with LiveServer(scenario(1000), port=0, speed=40, forget_after=None) as server:
            freed: list[weakref.ref[Any]] = []
            with cyclic_collector_off():
                await churn_one(server, "disconnect-bot", freed)
                while server.clients:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                conn = server.rtvi.connections["rtvi-1"]
                kept = server.sim.manager.status("rtvi-1") == "stopped" and conn.audio_frames == 0
                del conn
                return kept, [type(o) for o in (ref() for ref in freed[1:]) if o is not None]

    kept, alive = run(main())
    assert kept and alive == []
