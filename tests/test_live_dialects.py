"""The dialect seam: a third dialect, written here against the hub and the model alone and registered with one
line, works beside ``/ws`` and ``/rtvi`` (a reset, forgetting, the slow-client rule), editing no live module."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import run
from test_rtvi import rtvi_url, scenario, send
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from pipesim.live import LiveServer
from pipesim.live.connection import Client
from pipesim.live.dialect import DIALECTS
from pipesim.live.hub import Hub
from pipesim.live.rtvi_codec import decode_frame
from pipesim.live.source import LiveModel
from pipesim.model import Simulation
from pipesim.state import Transition


class Toy:
    """``/toy``: every transition of every session as one line of text, ``reset`` and ``forgot ID``."""

    def __init__(self, hub: Hub, model: LiveModel) -> None:
        self.hub, self.clients = hub, set[Client]()
        model.subscribe(self._on_transition)
        model.on_reset(self._on_reset)
        model.on_forget(lambda sid: self._say(f"forgot {sid}"))

    async def serve(self, ws: ServerConnection) -> None:
        client = Client(ws, watch_all=False, watched=set())  # watches nothing: the toy says its own lines
        self.hub.attach(client)
        self.clients.add(client)
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            self.hub.detach(client)

    def _on_transition(self, tr: Transition) -> None:
        self._say(f"{tr.session_id} {tr.status} {tr.state}")

    def _on_reset(self, old: Simulation) -> None:
        self._say("reset")

    def _say(self, line: str) -> None:
        for client in list(self.clients):
            self.hub.offer(client, line)


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DIALECTS, "/toy", Toy)  # the one registration line


def toy_url(server: LiveServer) -> str:
    return server.url.removesuffix("/ws") + "/toy"


async def until(ws: object, wanted: str) -> list[str]:
    lines = []
    while not lines or lines[-1] != wanted:
        lines.append(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[attr-defined]
    return lines


def test_a_toy_dialect_works_beside_ws_and_rtvi_through_a_reset_and_forgetting() -> None:
    async def main() -> None:
        async with LiveServer(scenario(turns=1), port=0, speed=40, forget_after=1.0) as server, \
                connect(toy_url(server)) as toy, connect(server.url + "?session_id=abc") as seed, \
                connect(rtvi_url(server)) as rtvi:
            await seed.send(json.dumps({"type": "conversation_control", "action": "start", "session_id": "abc"}))
            created = json.loads(await seed.recv())
            assert created["type"] == "session_created"
            first = json.loads(await seed.recv())
            assert (await toy.recv()) == f"abc created {first['state']}"
            await send(rtvi, "client-ready", {}, "r1")
            assert decode_frame(await rtvi.recv()).message["type"] == "bot-ready"  # type: ignore[index]
            await until(toy, "rtvi-1 created listening")
            await seed.send(json.dumps({"type": "conversation_control", "action": "stop", "session_id": "abc"}))
            assert any(line.startswith("abc stopped ") for line in await until(toy, "forgot abc"))
            assert server.forgotten == 1
            await server.model.reset()
            await until(toy, "reset")
            last = json.loads(await seed.recv())
            while last["type"] != "session_ended":  # the seed client saw the stop as ever
                last = json.loads(await seed.recv())
            assert last["session_id"] == "abc"
            with pytest.raises(ConnectionClosed):  # the RTVI socket's session went with the reset
                while True:
                    await asyncio.wait_for(rtvi.recv(), 10)
            assert rtvi.close_code == 1000

    run(main())


def test_the_slow_client_rule_reaches_a_toy_client_and_spares_the_others() -> None:
    async def main() -> None:
        # One line queued is "too far behind": a control's burst of transitions overflows the toy's queue.
        async with LiveServer(scenario(turns=1), port=0, speed=40, client_queue=1) as server, \
                connect(toy_url(server)) as toy, connect(server.url) as seed:
            await seed.send(json.dumps({"type": "conversation_control", "action": "start", "session_id": "abc"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(toy.recv(), 10)
            assert toy.close_code == 1013 and server.slow_disconnects == 1
            assert json.loads(await seed.recv())["type"] == "session_created"

    run(main())


def test_a_bug_in_either_dialect_is_said_to_its_client_and_the_connection_carries_on(
        monkeypatch: pytest.MonkeyPatch, errors_logged: list[Any]) -> None:
    """The one connection loop (``Hub.serve``): a handler that raises is pipesim's bug, logged with its traceback,
    answered in the dialect's own words (``/ws``: ``error`` ``unsupported``, journaled as the frame's result;
    ``/rtvi``: ``error`` with ``fatal: false``), and the same connection goes on being served."""

    def boom(*args: Any) -> None:
        raise RuntimeError("a bug in a handler")

    async def main() -> None:
        async with LiveServer(scenario(turns=1), port=0, speed=40, admin_port=0) as server, \
                connect(server.url) as seed, connect(rtvi_url(server)) as rtvi:
            monkeypatch.setattr(server.ws, "_on_control", boom)
            start = {"type": "conversation_control", "action": "start", "session_id": "abc"}
            await seed.send(json.dumps(start))
            error = json.loads(await asyncio.wait_for(seed.recv(), 10))
            assert error == {"type": "error", "code": "unsupported", "message": "internal error: a bug in a handler",
                             "session_id": None}
            assert server.journal is not None
            inbound = [e for e in server.journal.entries() if e["direction"] == "in"]
            assert inbound[-1]["message"] == start
            assert inbound[-1]["result"] == {"error": {"code": "unsupported",
                                                       "message": "internal error: a bug in a handler"}}
            await seed.send("not json")  # the connection is still served
            assert json.loads(await asyncio.wait_for(seed.recv(), 10))["code"] == "bad_message"

            monkeypatch.setattr(server.rtvi, "_on_client_ready", boom)
            await send(rtvi, "client-ready", {}, "r1")
            said = decode_frame(await asyncio.wait_for(rtvi.recv(), 10)).message
            assert said == {"label": "rtvi-ai", "type": "error",
                            "data": {"error": "internal error: a bug in a handler", "fatal": False}}
            await send(rtvi, "send-text", {"content": "hi"}, "t1")
            answer = decode_frame(await asyncio.wait_for(rtvi.recv(), 10)).message
            assert answer is not None and answer["type"] == "error-response"  # (no session: it never got ready)

    run(main())
    assert len(errors_logged) == 2 and all(r.exc_info and r.getMessage().startswith("handling a frame from ")
                                           for r in errors_logged)
