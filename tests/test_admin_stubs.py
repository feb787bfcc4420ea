"""Stubs, journal count/find, reset with a body and recording through the admin API (WireMock's stub mappings,
request verification and recording, for pipesim's WebSocket messages).

Every test starts its own server on 127.0.0.1 (WebSocket and admin API on free ports), talks to the admin API
over real HTTP and to the server as a client would, over a WebSocket (``/ws``, or ``/rtvi`` in RTVI's framing).
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run, talking_scenario
from test_admin_api import admin_server, error_of, ok
from test_rtvi import receive, rtvi_url, send
from test_rtvi import scenario as rtvi_scenario
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pipesim.live import LiveClient, ReplayServer
from pipesim.live.rtvi_codec import encode_audio
from pipesim.live.stubs import matches

scenario = functools.partial(talking_scenario, name="stubs-test")
PAUSE = {"type": "conversation_control", "message": {"action": "pause"}}


# The pattern language ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ({}, {"a": 1}, True),
    ({"a": 1}, {"a": 1.0, "b": 2}, True),
    ({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 2, "d": 3}], "e": 4}}, True),
    ({"a": [1]}, {"a": [1, 2]}, False),  # a list is matched whole (element by element)
    ({"a": True}, {"a": 1}, False),  # JSON's true is not 1
    ({"a": 0}, {"a": False}, False),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {}, False),  # a key of the pattern must be there
    ({"a": "x"}, {"a": {"x": 1}}, False),
    ({"a": {}}, {"a": "x"}, False),
])
def test_a_pattern_matches_a_value_that_holds_it(pattern: Any, value: Any, expected: bool) -> None:
    assert matches(pattern, value) is expected


# Stubs on /ws ----------------------------------------------------------------------------------------------
def test_a_stub_answers_a_websocket_message_instead_of_the_model_and_the_journal_says_so() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1), paused=True) as (server, http), \
                LiveClient(server.url, session_id="sim-00001") as page:
            snap = await page.expect(lambda m: m.get("event") == "snapshot")
            stub = await ok(await http.post("/stubs", json={
                "when": {**PAUSE, "session_id": "sim-00001"},
                "then": {"respond": [{"type": "error", "code": "illegal_control", "message": "busy"}]}}), 201)
            assert stub["id"] == "stub-1" and stub["matched"] == 0 and stub["when"]["path"] == "/ws"

            await page.control("pause", "sim-00001")
            reply = await page.expect(lambda m: m["type"] == "error")
            assert reply == {"type": "error", "code": "illegal_control", "message": "busy", "session_id": "sim-00001"}
            await asyncio.sleep(0.1)
            assert server.sim.manager.status("sim-00001") == "active"  # replaced: the model never saw it
            assert not any(m.get("status") == "paused" for m in page.messages)

            taken = (await ok(await http.get("/stubs/stub-1")))
            assert taken["matched"] == 1 and taken["exhausted"] is False
            entries = (await ok(await http.post("/journal/find", json={"direction": "in"})))["entries"]
            assert [(e["result"], e["stub"]) for e in entries] == [("stubbed", "stub-1")]
            out = await ok(await http.post("/journal/find", json={"direction": "out", "connection": "c1"}))
            assert [e["message"]["message"] for e in out["entries"]] == ["busy"]  # the reply, journaled

            # Other messages go on to the model: a stop is not a pause.
            await page.control("stop", "sim-00001")
            await page.expect(lambda m: m["type"] == "session_ended")
            assert snap["seq"] < page.messages[-1]["seq"]
            await ok(await http.delete("/stubs/stub-1"))
            assert (await ok(await http.get("/stubs")))["stubs"] == []
            error_of(await http.get("/stubs/stub-1"), 404, "not_found")

    run(main())


def test_priority_picks_the_stub_times_exhausts_it_and_then_the_model_handles_the_message() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=2), paused=True) as (server, http), \
                LiveClient(server.url) as page:
            await page.expect(lambda m: m.get("event") == "snapshot")

            def answer(text: str) -> dict[str, Any]:
                return {"respond": [{"type": "error", "code": "unsupported", "message": text}]}

            await ok(await http.post("/stubs", json={"id": "any-pause", "when": PAUSE, "then": answer("low"),
                                                     "priority": 9}), 201)
            await ok(await http.post("/stubs", json={"id": "once", "when": PAUSE, "then": answer("once"),
                                                     "times": 1}), 201)
            await ok(await http.post("/stubs", json={"id": "newer", "when": {**PAUSE, "session_id": "sim-00002"},
                                                     "then": answer("newer")}), 201)
            listed = [s["id"] for s in (await ok(await http.get("/stubs")))["stubs"]]
            assert listed == ["newer", "once", "any-pause"]  # the order they are tried
            error_of(await http.post("/stubs", json={"id": "once", "when": PAUSE, "then": {}}), 409, "conflict")

            async def reply_to(session_id: str) -> str:
                await page.control("pause", session_id)  # (expect reads on from the last message it returned)
                return (await page.expect(lambda m: m["type"] == "error" and m["session_id"] == session_id))["message"]

            assert await reply_to("sim-00002") == "newer"  # equal priority (5): the newest first
            assert await reply_to("sim-00001") == "once"
            assert await reply_to("sim-00001") == "low"  # "once" is exhausted
            once = await ok(await http.get("/stubs/once"))
            assert once["matched"] == 1 and once["exhausted"] is True

            assert (await ok(await http.delete("/stubs"))) == {"cleared": 3}
            await page.control("pause", "sim-00001")  # no stub: the model pauses it
            await page.expect(lambda m: m.get("session_id") == "sim-00001" and m.get("status") == "paused")
            counted = await ok(await http.post("/journal/count", json={"direction": "in", **PAUSE}))
            assert counted == {"count": 4}
            assert (await ok(await http.post("/journal/count", json={"stub": "once"}))) == {"count": 1}

    run(main())


def test_a_delayed_pass_through_answers_on_the_simulated_clock_and_the_model_applies_the_message_then() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1), paused=True) as (server, http), \
                LiveClient(server.url, session_id="sim-00001") as page:
            await page.expect(lambda m: m.get("event") == "snapshot")
            t0 = (await ok(await http.get("/clock")))["t"]
            await ok(await http.post("/stubs", json={"when": PAUSE, "then": {
                "pass_through": True, "delay_s": 2.0,
                "respond": [{"type": "pipeline_state_update", "state": "processing",
                             "services": {"stt": "complete", "llm": "waiting", "tts": "idle"},
                             "metadata": {"buffer_size": 0, "audio_quality": 0.8}, "error": "pausing..."}]}}),
                201)
            await page.control("pause", "sim-00001")
            await asyncio.sleep(0.3)  # the paused clock holds the answer
            assert server.sim.manager.status("sim-00001") == "active"
            assert not any(m.get("error") == "pausing..." for m in page.messages)
            [entry] = (await ok(await http.post("/journal/find", json={"direction": "in"})))["entries"]
            assert entry["result"] == "delayed" and entry["stub"] == "stub-1"

            await ok(await http.post("/clock/advance", json={"seconds": 1.9}))
            await asyncio.sleep(0.1)
            assert server.sim.manager.status("sim-00001") == "active"
            await ok(await http.post("/clock/advance", json={"seconds": 0.2}))
            note = await page.expect(lambda m: m.get("error") == "pausing...")
            paused = await page.expect(lambda m: m.get("status") == "paused")
            assert note["timestamp"] == pytest.approx(t0 + 2.0) == paused["timestamp"]  # on time, reply first
            assert note["seq"] < paused["seq"]
            [entry] = (await ok(await http.post("/journal/find", json={"direction": "in"})))["entries"]
            assert entry["result"] == "applied"

            # Passed through with no delay: the reply comes first, then the model's own answer (an error here).
            await ok(await http.post("/stubs", json={"id": "echo", "priority": 1, "when": PAUSE, "then": {
                "pass_through": True, "respond": [{"type": "error", "code": "unsupported", "message": "seen"}]}}),
                201)
            await page.control("pause", "sim-00001")
            await page.expect(lambda m: m["type"] == "error" and m["code"] == "illegal_control")
            errors = [m["message"] for m in page.messages if m["type"] == "error"]
            assert errors[0] == "seen" and len(errors) == 2
            refused = await ok(await http.post("/journal/find", json={"stub": "echo"}))
            assert refused["entries"][0]["result"]["error"]["code"] == "illegal_control"

    run(main())


def test_a_stub_closes_the_connection_with_its_code_and_applies_its_fault() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1), paused=True) as (server, http), \
                LiveClient(server.url, session_id="sim-00001") as page:
            await page.expect(lambda m: m.get("event") == "snapshot")
            await ok(await http.post("/stubs", json={"when": {"message": {"action": "stop"}}, "then": {
                "respond": [{"type": "error", "code": "unsupported", "message": "bye"}],
                "fault": {"fault": "kafka_stall", "service": "llm", "duration_s": 4},
                "close": {"code": 4001, "reason": "stubbed"}}}), 201)
            now = (await ok(await http.get("/clock")))["t"]
            await page.control("stop", "sim-00001")
            assert await page.wait_closed() == (4001, "stubbed")
            assert any(m.get("message") == "bye" for m in page.messages)  # written before the close
            assert server.sim.kafka.delay("llm", now + 1, 0.0) == pytest.approx(3.0)  # stalled until now + 4
            assert server.sim.kafka.delay("stt", now + 1, 0.0) == 0.0
            assert server.sim.manager.status("sim-00001") == "active"

    run(main())


@pytest.mark.parametrize(("then", "field"), [
    ({"close": {"code": 1006}}, "body.then.close.code"),
    ({"close": {"code": 5000}}, "body.then.close.code"),
    ({"close": {"code": 4000, "reason": "x" * 200}}, "body.then.close.reason"),
    ({"respond": [{"type": "pipeline_state_update", "state": "thinking"}]}, "body.then.respond[0]"),
    ({"respond": [{"type": "conversation_control"}]}, "body.then.respond[0]"),
    ({"fault": {"fault": "service_outage"}}, "body.then.fault.service"),
    ({"fault": {"fault": "meteor"}}, "body.then.fault.fault"),
    ({"delay_s": -1}, "body.then.delay_s"),
    ({"pass_through": "sometimes"}, "body.then.pass_through"),
    ({"reply": []}, "body.then.reply"),
])
def test_a_bad_stub_is_422_naming_its_field(then: dict[str, Any], field: str) -> None:
    async def main() -> None:
        async with admin_server(scenario(), paused=True) as (server, http):
            message = error_of(await http.post("/stubs", json={"when": PAUSE, "then": then}), 422, "bad_request")
            assert message.startswith(field) and "Value error" not in message, message
            for body, where in (({"when": {"path": "/sse"}, "then": {}}, "body.when.path"),
                                ({"when": PAUSE, "then": {}, "priority": 0}, "body.priority"),
                                ({"when": PAUSE, "then": {}, "times": 0}, "body.times"),
                                ({"when": {"path": "/rtvi"}, "then": {"respond": [{"data": 1}]}},
                                 "body.then.respond[0].type")):
                assert error_of(await http.post("/stubs", json=body), 422, "bad_request").startswith(where)
            assert (await ok(await http.get("/stubs")))["stubs"] == []

    run(main())


# Stubs on /rtvi ----------------------------------------------------------------------------------------
def test_a_stub_answers_an_rtvi_client_message_with_the_request_id_and_closes_the_socket() -> None:
    async def main() -> None:
        async with admin_server(rtvi_scenario(), speed=10) as (server, http), connect(rtvi_url(server)) as ws:
            await ok(await http.post("/stubs", json={"when": {"path": "/rtvi", "type": "client-message",
                                                              "message": {"data": {"t": "ping"}}},
                                                     "then": {"respond": [{"type": "server-response",
                                                                           "data": {"t": "ping", "d": "pong"}}],
                                                              "close": {"code": 4002, "reason": "enough"}}}), 201)
            await send(ws, "client-ready", {}, "r1")
            await receive(ws, until="bot-ready")
            await send(ws, "client-message", {"t": "other", "d": 1}, "m1")  # not stubbed: the model's echo
            echo = [m for m in await receive(ws, until="server-response") if m["type"] == "server-response"]
            assert echo[0]["id"] == "m1" and echo[0]["data"]["d"]["received"] == 1
            await send(ws, "client-message", {"t": "ping"}, "m2")
            got = [m for m in await receive(ws) if m["type"] == "server-response"]
            assert got == [{"label": "rtvi-ai", "type": "server-response", "data": {"t": "ping", "d": "pong"},
                            "id": "m2"}]
            await ws.wait_closed()
            assert ws.close_code == 4002 and ws.close_reason == "enough"
            assert (await ok(await http.get("/stubs/stub-1")))["matched"] == 1

    run(main())


# Journal count and find ----------------------------------------------------------------------------------
def test_journal_count_and_find_answer_did_the_page_send_exactly_one_pause_for_session_x() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=2), paused=True) as (server, http), \
                LiveClient(server.url) as page:
            await page.expect(lambda m: m.get("event") == "snapshot")
            mark = (await ok(await http.get("/journal", params={"limit": 0})))["last_id"]
            for action, sid in (("pause", "sim-00001"), ("pause", "nobody"), ("pause", "sim-00002"),
                                ("start", "sim-00001")):
                await page.control(action, sid)
                await page.expect(lambda m, sid=sid: m.get("session_id") == sid)

            async def count(**pattern: Any) -> int:
                return (await ok(await http.post("/journal/count", json=pattern)))["count"]

            assert await count(direction="in", session_id="sim-00001", **PAUSE) == 1
            assert await count(direction="in", type="conversation_control") == 4
            assert await count(direction="in", result="applied") == 3
            assert await count(result={"error": {"code": "unknown_session"}}) == 1
            assert await count(direction="in", message={"action": "pause", "session_id": "sim-00002"}) == 1
            assert await count(direction="in", since=mark + 1) == 3
            assert await count(direction="in", session_id="sim-00003") == 0
            found = await ok(await http.post("/journal/find", json={"direction": "in", "message": {"action": "pause"},
                                                                   "limit": 2}))
            assert [e["session_id"] for e in found["entries"]] == ["nobody", "sim-00002"]
            assert found["last_id"] >= found["entries"][-1]["id"]
            out = await count(direction="out", session_id="sim-00001", message={"status": "paused"})
            assert out >= 1  # broadcasts, journaled as text, are matched too

            for body, where in (({"direction": "sideways"}, "body.direction"), ({"since": -1}, "body.since"),
                                ({"message": [1]}, "body.message"), ({"kind": "x"}, "body.kind"),
                                ({"limit": 2}, "body.limit")):
                assert error_of(await http.post("/journal/count", json=body), 422, "bad_request").startswith(where)

    run(main())


def test_journal_counts_what_an_rtvi_page_sent_about_its_session_but_not_its_microphone() -> None:
    async def main() -> None:
        async with admin_server(rtvi_scenario(), speed=10) as (server, http), connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r1")
            await receive(ws, until="bot-ready")
            for _ in range(5):  # microphone audio: fifty frames a second, not journaled
                await ws.send(encode_audio(b"\x00\x00" * 320, 16000, 1))
            await send(ws, "send-text", {"content": "hello"}, "t1")
            await send(ws, "no-such-type", {}, "x1")
            await receive(ws, until="error-response")

            async def count(**pattern: Any) -> int:
                return (await ok(await http.post("/journal/count", json=pattern)))["count"]

            assert await count(direction="in", connection="r1") == 3
            assert await count(direction="in", session_id="rtvi-1", type="send-text",
                               message={"data": {"content": "hello"}}, result="applied") == 1
            assert await count(direction="in", type="no-such-type", result={"error": {"code": "error-response"}}) == 1
            assert await count(direction="in", type="client-ready", session_id=None) == 1  # before it had one

    run(main())


# Reset with a body ----------------------------------------------------------------------------------------
def test_reset_switches_scenario_seed_and_speed_and_removes_the_stubs() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1), paused=True) as (server, http):
            await ok(await http.post("/stubs", json={"when": PAUSE, "then": {}}), 201)
            clock = await ok(await http.post("/reset", json={"scenario": "baseline", "seed": 7, "speed": 3}))
            assert clock["t"] == 0.0 and clock["paused"] is True and clock["speed"] == 3.0
            health = await ok(await http.get("/health"))
            assert (health["scenario"], health["seed"]) == ("baseline", 7) and server.scenario.name == "baseline"
            assert (await ok(await http.get("/stubs")))["stubs"] == []

            inline = {"name": "two-users", "seed": 3, "sessions": {"arrivals": {"kind": "at_once", "count": 2},
                                                                   "turns": 3}}
            await ok(await http.post("/reset", json={"scenario": inline}))
            assert (await ok(await http.get("/health")))["seed"] == 3  # the new scenario's own seed
            await ok(await http.post("/clock/step", json={"count": 1}))
            assert [s["session_id"] for s in (await ok(await http.get("/sessions")))["sessions"]] == \
                ["sim-00001", "sim-00002"]
            await ok(await http.post("/reset"))  # no body: the same scenario, seed and speed
            assert (await ok(await http.get("/health")))["scenario"] == "two-users"
            assert (await ok(await http.get("/clock")))["speed"] == 3.0

            for body, where in (({"scenario": {"sessions": {"turns": -3}}}, "body.scenario.sessions.turns"),
                                ({"scenario": {"sessoins": {}}}, "body.scenario.sessoins"),
                                ({"scenario": "no_such_scenario"}, "body.scenario: no bundled scenario"),
                                ({"scenario": "../../etc/passwd"}, "body.scenario: no bundled scenario"),
                                ({"seed": -1}, "body.seed"), ({"speed": 0}, "body.speed"),
                                ({"scenario": [1]}, "body.scenario")):
                assert error_of(await http.post("/reset", json=body), 422, "bad_request").startswith(where)
            assert (await ok(await http.get("/health")))["scenario"] == "two-users"  # nothing changed

    run(main())


# Recording ----------------------------------------------------------------------------------------------
def test_recording_started_and_stopped_through_the_api_is_a_file_pipesim_replay_plays(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rec.jsonl"

    async def main() -> None:
        async with admin_server(scenario(background=1), paused=True) as (server, http):
            assert (await ok(await http.get("/recording")))["recording"] is False
            started = await ok(await http.post("/recording/start", json={"path": str(path)}))
            assert started == {"path": str(path), "recording": True, "messages": 0, "segments": 1}
            error_of(await http.post("/recording/start", json={"path": str(path)}), 409, "conflict")
            await ok(await http.post("/clock/advance", json={"seconds": 5}))
            stopped = await ok(await http.post("/recording/stop"))
            assert stopped["recording"] is False and stopped["messages"] > 3
            assert (await ok(await http.get("/recording"))) == stopped
            error_of(await http.post("/recording/stop"), 409, "conflict")
            message = error_of(await http.post("/recording/start", json={"path": "relative.jsonl"}), 422,
                               "bad_request")
            assert message.startswith("body.path") and "absolute" in message
            blocked = tmp_path / "file"
            blocked.write_text("")
            assert error_of(await http.post("/recording/start", json={"path": str(blocked / "x.jsonl")}), 422,
                            "bad_request").startswith("body.path: cannot write")
            return stopped["messages"]

    async def replay(written: int) -> None:
        async with ReplayServer(path, port=0, speed=100) as server, LiveClient(server.url) as client:
            await server.wait_finished()
            await client.expect(lambda m: len(client.messages) >= written)
            assert {m["session_id"] for m in client.messages} == {"sim-00001"}

    run(replay(run(main())))


def test_a_replay_has_no_stubs_but_counts_its_journal() -> None:
    items = [(0.0, {"type": "session_created", "session_id": "r", "timestamp": 0.0, "seq": 0})]

    async def main() -> None:
        import httpx2 as httpx

        async with ReplayServer(items, port=0, admin_port=0) as server, \
                httpx.AsyncClient(base_url=server.admin_url, timeout=10) as http:
            error_of(await http.post("/stubs", json={"when": PAUSE, "then": {}}), 409, "unsupported")
            error_of(await http.get("/stubs"), 409, "unsupported")
            error_of(await http.post("/reset", json={"seed": 1}), 409, "unsupported")
            async with LiveClient(server.url) as client:
                await client.expect(lambda m: m["type"] == "session_created")
            assert (await ok(await http.post("/journal/count", json={"type": "session_created"}))) == {"count": 1}

    run(main())


# The Python helpers (pipesim.testing) ----------------------------------------------------------------------
@pytest.mark.pipesim(scenario=scenario(background=2), paused=True)
def test_the_pytest_fixture_stubs_counts_finds_resets_and_records(pipesim_server: Any, tmp_path: Path) -> None:
    from websockets.sync.client import connect as connect_sync

    admin = pipesim_server.admin
    stub = admin.stub({"type": "conversation_control", "message": {"action": "pause"}},
                      respond=[{"type": "error", "code": "illegal_control", "message": "busy"}], times=1)
    closer = admin.stub({"message": {"action": "stop"}}, close=(4003, "no stopping"), stub_id="closer")
    assert [s["id"] for s in admin.stubs()] == ["closer", stub["id"]] and closer["then"]["close"]["code"] == 4003
    pause = json.dumps({"type": "conversation_control", "action": "pause", "session_id": "sim-00001"})

    def next_message(ws: Any, predicate: Any) -> dict[str, Any]:
        while not predicate(message := json.loads(ws.recv(timeout=10))):
            pass
        return message

    with connect_sync(pipesim_server.ws_url) as ws:
        ws.send(pause)
        assert next_message(ws, lambda m: m["type"] == "error")["message"] == "busy"
        ws.send(pause)  # the stub is exhausted: the model pauses the session
        next_message(ws, lambda m: m.get("status") == "paused")
        ws.send(json.dumps({"type": "conversation_control", "action": "stop", "session_id": "sim-00001"}))
        with pytest.raises(ConnectionClosed) as closed:
            next_message(ws, lambda m: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003

    assert admin.count(direction="in", session_id="sim-00001", message={"action": "pause"}) == 2
    assert [e["result"] for e in admin.find(direction="in", type="conversation_control")] == \
        ["stubbed", "applied", "stubbed"]
    assert admin.find(direction="in", limit=1)[0]["stub"] == "closer"
    assert admin.get_stub(stub["id"])["exhausted"] is True
    assert admin.delete_stub("closer")["matched"] == 1 and admin.clear_stubs() == 1

    recording = str(tmp_path / "rec.jsonl")
    assert admin.start_recording(recording)["recording"] is True
    admin.advance(3)
    assert admin.stop_recording()["messages"] == admin.recording()["messages"] > 0
    assert admin.reset("baseline", seed=7, speed=2) == {**admin.clock(), "t": 0.0}
    assert admin.health()["scenario"] == "baseline" and admin.health()["seed"] == 7
    assert admin.stubs() == [] and admin.count() == 0


def test_a_delayed_answer_that_comes_while_another_message_is_handled_leaves_that_ones_result_alone() -> None:
    """A delayed stub answers from inside a step of the model, and a step can happen while the same client's
    next message is being handled (its catch-up steps what is due): the stub's error reply belongs to the
    message it took, not to the one being handled (whose journal result it overwrote)."""
    from types import SimpleNamespace

    from pipesim.live.connection import Client
    from pipesim.live.hub import Hub
    from pipesim.live.journal import Journal
    from pipesim.live.source import LiveModel
    from pipesim.live.stubs import Stub, Stubs

    journal = Journal()
    hub, model = Hub(journal=journal), LiveModel(scenario())
    stubs = Stubs(hub, model)
    stubs.add(Stub("late", {"path": "/ws", "message": {"action": "pause"}}, delay_s=1.0,
                   respond=[{"type": "error", "code": "illegal_control", "message": "busy"}]))
    client = Client(SimpleNamespace(), watch_all=True, watched=set(), id="c1")  # (the hub only queues for it)
    pause = {"type": "conversation_control", "action": "pause", "session_id": "a"}
    first = client.inbound = journal.inbound("c1", pause, 0.0)
    stubs.take(client, "/ws", "a", pause, handle=lambda: pytest.fail("a stub without pass_through replaces it"))
    second = client.inbound = journal.inbound("c1", {**pause, "action": "start"}, 0.5)
    model.sim.env.run(until=2.0)  # the stub's answer is due while the second message is being handled
    assert client.inbound is second and second["result"] is None and second.get("stub") is None
    assert first["result"] == "stubbed" and first["stub"] == "late"
    assert [e["message"]["message"] for e in journal.entries(direction="out")] == ["busy"]
